"""Host overhead of the training loop: loop time per step minus the compiled step's time.

    nice -n 10 python benchmarks/host_overhead.py [--epochs 6] [--rounds 3]

For each config (UCI-MF and synthetic, vanilla and G-Blend's ``gradient`` estimator) and in
interleaved rounds: a real run (``train.train_and_evaluate``, no progress bar) whose
``steps_per_second`` train records give the loop's time per step (the best epoch after the
first, which compiles), and the same config's compiled train step run back to back on
pre-sharded batches (:class:`benchmarks.timing._StepRunner`). The overhead is their difference;
issue 12's goal is an overhead of at most 10% of the compiled step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.timing import _StepRunner  # noqa: E402  pylint: disable=wrong-import-position
from configs import synthetic, ucimf  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import metrics, train  # noqa: E402  pylint: disable=wrong-import-position


def _configs(epochs: int) -> dict:
  configs = {
      'ucimf vanilla': ucimf.get_config('method=vanilla'),
      'ucimf gblend gradient': ucimf.get_config('method=gblend,estimator=gradient'),
      'synthetic vanilla': synthetic.get_config('method=vanilla'),
      'synthetic gblend gradient': synthetic.get_config('method=gblend,estimator=gradient'),
  }
  for config in configs.values():
    config.num_epochs = epochs
    config.progress_bar = False
  return configs


def loop_ms_per_step(config) -> float:
  """The best epoch's loop time per step (ms) of a real run, the first (compiling) epoch left out."""
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    train.train_and_evaluate(config, workdir)
    records = metrics.select(metrics.read_metrics(workdir), 'train')
  rates = [r['steps_per_second'] for r in records if 'steps_per_second' in r][1:]
  return 1e3 / max(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=6)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()
  configs = _configs(args.epochs)
  runners = {name: _StepRunner(config, args.steps) for name, config in configs.items()}
  loop = {name: float('inf') for name in configs}
  step = {name: float('inf') for name in configs}
  for _ in range(args.rounds):
    for name, config in configs.items():
      runners[name].run(3)
      step[name] = min(step[name], 1e3 * runners[name].run(args.steps))
      loop[name] = min(loop[name], loop_ms_per_step(config))
  print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f"{'config':<28}{'loop ms/step':>14}{'step ms':>10}{'overhead ms':>13}{'overhead %':>12}")
  for name in configs:
    overhead = loop[name] - step[name]
    print(f'{name:<28}{loop[name]:>14.2f}{step[name]:>10.2f}{overhead:>13.2f}'
          f'{100 * overhead / step[name]:>12.0f}')


if __name__ == '__main__':
  main()
