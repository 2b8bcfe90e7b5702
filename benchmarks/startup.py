"""Start-up time: from the CLI's start until the first train step has finished.

    nice -n 10 python benchmarks/startup.py [--configs synthetic,ucimf,cgmnist] [--repeats 2] \
        [--baseline OTHER_CHECKOUT]

Each measurement is a fresh ``python -m mmjax.main --config configs/NAME.py:smoke`` process
(this script re-runs itself as that process with a timer around the first train step), timed
from just before the process starts. Per config, in rounds alternating the modes:

- ``off``: ``MMJAX_COMPILATION_CACHE=off``, every function compiles (what a run cost before the
  cache);
- ``first``: an empty cache folder (the first run on a machine: compiles and writes the cache);
- ``second``: the same folder again (every later run: reads the compiled functions back);
- ``baseline``: with ``--baseline DIR``, the code of another checkout (e.g. an older commit:
  ``git archive COMMIT | tar -x -C DIR``), as it starts there.

Prints, per config and mode, the best round's seconds to the first finished step and the
seconds of its parts inside the process: ``imports`` (Python start and imports),
``trainer`` (data, model, method), ``init`` (``Trainer.init_state``: initial parameters) and
``step`` (the first step: its compilation, or cache read, and its run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = '--child'


def _child(argv: list[str]) -> None:
  """Runs the CLI with ``argv``; exits right after the first train step, printing its timings."""
  start = float(os.environ['STARTUP_T0'])
  sys.path.insert(0, os.environ['STARTUP_ROOT'])
  import jax  # pylint: disable=import-outside-toplevel
  from mmjax import main, train  # pylint: disable=import-outside-toplevel
  marks = {'imports': time.time()}
  build, init_state = train.Trainer.__init__, train.Trainer.init_state

  def timed_build(trainer, *args, **kwargs):
    marks['trainer_start'] = time.time()
    build(trainer, *args, **kwargs)
    marks['trainer'] = time.time()
    compiled_step = trainer.jit_train_step

    def first_step(*step_args):
      out = jax.block_until_ready(compiled_step(*step_args))
      marks['step'] = time.time()
      parts = {'total': marks['step'] - start, 'imports': marks['imports'] - start,
               'trainer': marks['trainer'] - marks['trainer_start'],
               'init': marks['init'] - marks['init_start'],
               'step': marks['step'] - marks['init']}
      print('STARTUP ' + json.dumps(parts), flush=True)
      os._exit(0)  # pylint: disable=protected-access
      return out

    trainer.jit_train_step = first_step

  def timed_init(trainer):
    marks['init_start'] = time.time()
    state = jax.block_until_ready(init_state(trainer))
    marks['init'] = time.time()
    return state

  train.Trainer.__init__, train.Trainer.init_state = timed_build, timed_init
  sys.exit(main.main(argv))


def measure(config: str, cache: str, root: str = ROOT) -> dict[str, float]:
  """One process's start-up parts (seconds) for ``configs/<config>.py:smoke`` of ``root``."""
  with tempfile.TemporaryDirectory() as workdir:
    env = {**os.environ, 'MMJAX_COMPILATION_CACHE': cache, 'PYTHONPATH': root,
           'STARTUP_ROOT': root, 'STARTUP_T0': repr(time.time())}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), CHILD,
         '--config', os.path.join(root, 'configs', f'{config}.py:smoke'),
         '--workdir', os.path.join(workdir, 'run'), '--config.progress_bar=False'],
        env=env, capture_output=True, text=True, check=False)
  lines = [l for l in out.stdout.splitlines() if l.startswith('STARTUP ')]
  if not lines:
    raise RuntimeError(f'{config} ({cache}) did not reach a first step:\n{out.stderr[-3000:]}')
  return json.loads(lines[0][len('STARTUP '):])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='synthetic,ucimf,cgmnist')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--baseline', help='another checkout of mmjax to time alongside')
  args = parser.parse_args()
  print(f'load average: {os.getloadavg()}')
  results: dict[tuple[str, str], list[dict[str, float]]] = {}
  for _ in range(args.repeats):
    for config in args.configs.split(','):
      with tempfile.TemporaryDirectory() as cache:
        for mode, folder in (('off', 'off'), ('first', cache), ('second', cache)):
          results.setdefault((config, mode), []).append(measure(config, folder))
        if args.baseline:
          results.setdefault((config, 'baseline'), []).append(
              measure(config, 'off', os.path.abspath(args.baseline)))
  print(f'load average: {os.getloadavg()}')
  print(f"{'config':<10}{'cache':<8}{'total s':>9}{'imports':>9}{'trainer':>9}{'init':>8}"
        f"{'step':>8}")
  for (config, mode), runs in results.items():
    best = min(runs, key=lambda r: r['total'])
    print(f"{config:<10}{mode:<8}{best['total']:>9.2f}{best['imports']:>9.2f}"
          f"{best['trainer']:>9.2f}{best['init']:>8.2f}{best['step']:>8.2f}")


if __name__ == '__main__':
  if len(sys.argv) > 1 and sys.argv[1] == CHILD:
    _child(sys.argv[2:])
  else:
    main()
