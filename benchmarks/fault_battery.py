"""Fault battery: kill runs at known points, resume them, compare with uninterrupted runs.

For each of three tiny synthetic runs (vanilla with checkpoints every 3 steps, online G-Blend
re-estimating every epoch, greedy guided re-balancing), the battery

1. runs it uninterrupted in this process, tracing every crash point reached
   (``MMJAX_FAULT_TRACE``, see :mod:`mmjax.faults`);
2. picks kill points from the trace (inside an epoch, after each kind of metrics record, between
   a checkpoint's write and its commit, after the commit, inside a G-Blend estimation, in the
   first epoch after a re-estimation, ...);
3. for each, runs the same config in a subprocess with ``MMJAX_FAULT=<point>:<n>``, which ends
   with exit code 137 exactly there (as ``kill -9`` would), then reruns it in this process;
4. compares the resumed run with the uninterrupted one: the whole latest train state (params,
   optimiser, method state, RNG) bit for bit and its JSON position, the best-val checkpoint
   (its step and its state), the set of checkpoint steps on disk, ``metrics.jsonl`` (every key
   but the wall-clock ``steps_per_second``) and the TensorBoard scalars (likewise).

Run from the repository root::

    nice -n 10 python -m benchmarks.fault_battery            # all trials, prints a table
    python -m benchmarks.fault_battery --only gblend_online  # one config

It exits non-zero when a trial differs or a kill point is not reached.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import synthetic  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import checkpointing, faults, metrics, train  # noqa: E402  pylint: disable=wrong-import-position

CHECKPOINTS = train.CHECKPOINT_DIR


def tiny_config(name: str):
  """The three battery runs: 8 steps per epoch, 3 epochs, small MLPs / MMTM."""
  method, args = {'vanilla': ('vanilla', ''), 'gblend_online': ('gblend', ',estimator=online'),
                  'greedy_guided': ('greedy', ',mode=guided')}[name]
  config = synthetic.get_config(f'method={method},smoke{args}')
  config.data.num_train, config.data.num_val, config.data.num_test = 256, 64, 64
  config.batch_size, config.eval_batch_size = 32, 64
  config.log_every_steps = 4
  config.progress_bar = False
  config.num_epochs = 3
  if name == 'vanilla':
    config.checkpoint_every_steps = 3
  if name == 'gblend_online':
    config.method.update({'warmup_epochs': 1, 'super_epoch': 1})
  return config


CONFIGS = ('vanilla', 'gblend_online', 'greedy_guided')


def _occurrences(trace: list[str], point: str) -> list[int]:
  """Positions in ``trace`` of each arrival at ``point`` (the n-th is at index n - 1)."""
  return [i for i, p in enumerate(trace) if p == point]


def _count_before(trace: list[str], point: str, position: int) -> int:
  """How many arrivals at ``point`` happen at or before ``position`` in the trace."""
  return sum(1 for i in _occurrences(trace, point) if i <= position)


def choose_trials(name: str, trace: list[str]) -> list[tuple[str, int, str]]:
  """``(point, n, what)`` kill points of run ``name``, found in its uninterrupted trace."""
  at = lambda point: len(_occurrences(trace, point))  # noqa: E731
  steps_per_epoch = _count_before(trace, 'train_step', _occurrences(trace, 'epoch_end')[0])
  trials = [
      ('train_step', 1, 'after the first step'),
      ('train_step', steps_per_epoch // 2 + 1, 'inside epoch 1'),
      ('train_step', steps_per_epoch, 'after the last step of epoch 1'),
      ('metrics_record', 1, 'after the first record'),
      ('eval_batch', at('eval_batch'), 'in the last evaluation'),
      ('checkpoint_before_commit', 1, 'first checkpoint written, not committed'),
      ('checkpoint_after_commit', 1, 'first checkpoint committed, old ones not removed'),
      ('epoch_end', 1, 'after epoch 1'),
  ]
  if name == 'vanilla':  # 8 steps per epoch, checkpoints at steps 3, 6, 8, 9, 12, 15, 16, ...
    trials += [
        ('train_step', 13, 'inside epoch 2, after a mid-epoch checkpoint'),
        ('train_step', 20, 'inside epoch 3'),
        ('metrics_record', 2, 'after the first val record'),
        ('metrics_record', 3, 'after the first test record, before its checkpoint'),
        ('metrics_record', 5, 'after the second val record'),
        ('checkpoint_before_commit', 3, 'epoch-end checkpoint written, not committed'),
        ('checkpoint_before_commit', at('checkpoint_before_commit'), 'last checkpoint, not committed'),
        ('checkpoint_after_commit', 3, 'epoch-end checkpoint committed'),
        ('checkpoint_saved', 4, 'after handing a mid-epoch checkpoint to the writer'),
        ('eval_batch', 1, 'in the first evaluation'),
    ]
  if name == 'gblend_online':
    second_start = _occurrences(trace, 'epoch_start')[1]
    second_done = _occurrences(trace, 'epoch_hook_done')[1]
    inside = [i for i in _occurrences(trace, 'eval_batch') if second_start < i < second_done]
    inside_shard = [i for i in _occurrences(trace, 'shard') if second_start < i < second_done]
    estimation_record = _count_before(trace, 'metrics_record', second_done) + 1
    first_step_after = _count_before(trace, 'train_step', second_done) + 1
    trials += [
        ('epoch_start', 2, 'before the second estimation'),
        ('eval_batch', _count_before(trace, 'eval_batch', inside[0]), 'inside the 2nd estimation (first eval)'),
        ('eval_batch', _count_before(trace, 'eval_batch', inside[-1]), 'inside the 2nd estimation (last eval)'),
        ('shard', _count_before(trace, 'shard', inside_shard[len(inside_shard) // 2]),
         'inside the 2nd estimation (training the copies)'),
        ('epoch_hook_done', 2, 'after the 2nd estimation, before its record'),
        ('metrics_record', estimation_record, 'after the 2nd estimation record'),
        ('train_step', first_step_after, 'first step after the 2nd re-estimation'),
        ('train_step', first_step_after + 4, 'inside the first epoch after the 2nd re-estimation'),
        ('checkpoint_before_commit', 2, 'epoch-2 checkpoint written, not committed'),
        ('checkpoint_after_commit', 2, 'epoch-2 checkpoint committed'),
    ]
  if name == 'greedy_guided':  # 8 steps per epoch
    trials += [
        ('train_step', 12, 'inside epoch 2'),
        ('metrics_record', 3, 'after the first test record, before its checkpoint'),
        ('checkpoint_before_commit', 2, 'epoch-2 checkpoint written, not committed'),
        ('checkpoint_after_commit', 3, 'last checkpoint committed'),
        ('checkpoint_saved', 1, 'after handing the first checkpoint to the writer'),
        ('epoch_end', 2, 'after epoch 2'),
    ]
  return trials


def _state_target(config):
  return train.Trainer(config).init_state()


def snapshot(workdir: str, target: Any) -> dict[str, Any]:
  """What a run left that a resumed run must reproduce."""
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, CHECKPOINTS))
  try:
    latest_state, latest_extra = ckpt.restore_latest(target)
    best_step = ckpt.best_step()
    best_state, _ = ckpt.restore_best(target)
    steps = ckpt.all_steps()
  finally:
    ckpt.close()
  timing_tags = {f'train/{k}' for k in metrics.TIMING_KEYS}
  return {
      'latest': jax.device_get(latest_state), 'extra': latest_extra, 'best_step': best_step,
      'best': jax.device_get(best_state), 'steps': steps,
      'metrics': metrics.without_timing(metrics.read_metrics(workdir)),
      'tensorboard': [s for s in metrics.read_tensorboard_scalars(workdir) if s[0] not in timing_tags],
  }


def _trees_equal(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return (jax.tree.structure(a) == jax.tree.structure(b) and
          all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb)))


def compare(reference: dict[str, Any], resumed: dict[str, Any]) -> list[str]:
  """The names of what differs (empty when the resumed run equals the reference)."""
  diffs = []
  if not _trees_equal(reference['latest'], resumed['latest']):
    diffs.append('latest state')
  if reference['extra'] != resumed['extra']:
    diffs.append('latest position')
  if reference['best_step'] != resumed['best_step'] or not _trees_equal(reference['best'], resumed['best']):
    diffs.append('best checkpoint')
  if reference['steps'] != resumed['steps']:
    diffs.append(f"checkpoint steps {resumed['steps']} (expected {reference['steps']})")
  if reference['metrics'] != resumed['metrics']:
    diffs.append(f"metrics.jsonl ({len(resumed['metrics'])} records, expected {len(reference['metrics'])})")
  if reference['tensorboard'] != resumed['tensorboard']:
    diffs.append(f"tensorboard ({len(resumed['tensorboard'])} scalars, expected "
                 f"{len(reference['tensorboard'])})")
  return diffs


def run_reference(name: str, workdir: str, trace_path: str) -> list[str]:
  """Runs ``name`` uninterrupted in this process; returns the crash points it passed, in order."""
  os.environ[faults.TRACE_ENV_VAR] = trace_path
  try:
    train.train_and_evaluate(tiny_config(name), workdir)
  finally:
    del os.environ[faults.TRACE_ENV_VAR]
  with open(trace_path, encoding='utf-8') as f:
    return f.read().split()


def kill_and_resume(name: str, point: str, n: int, workdir: str,
                    log: Callable[[str], None] = lambda _: None) -> tuple[int, str]:
  """Runs ``name`` in a subprocess killed at the ``n``-th ``point``, then resumes it here.

  Returns the subprocess's exit code and the tail of its stderr.
  """
  env = dict(os.environ, **{faults.ENV_VAR: f'{point}:{n}'}, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  env.pop(faults.TRACE_ENV_VAR, None)
  cmd = [sys.executable, '-m', 'benchmarks.fault_battery', '--run', name, '--workdir', workdir]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  log(f'  killed run exit {out.returncode}')
  train.train_and_evaluate(tiny_config(name), workdir)
  return out.returncode, out.stderr[-2000:]


def run_battery(names=CONFIGS, base_dir: str | None = None, limit: int | None = None,
                log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Runs the trials of ``names``; returns one result dict per trial."""
  base_dir = base_dir or tempfile.mkdtemp(prefix='mmjax_faults_')
  results = []
  for name in names:
    ref_dir = os.path.join(base_dir, name, 'reference')
    trace = run_reference(name, ref_dir, os.path.join(base_dir, name, 'trace.txt'))
    target = _state_target(tiny_config(name))
    reference = snapshot(ref_dir, target)
    trials = choose_trials(name, trace)[:limit]
    for k, (point, n, what) in enumerate(trials):
      workdir = os.path.join(base_dir, name, f'{k:02d}_{point}_{n}')
      log(f'{name}: {point}:{n} ({what})')
      started = time.perf_counter()
      code, stderr = kill_and_resume(name, point, n, workdir, log)
      diffs = compare(reference, snapshot(workdir, target)) if code == faults.EXIT_CODE else \
          [f'not killed (exit {code}): {stderr.strip().splitlines()[-1:] }']
      results.append({'config': name, 'point': f'{point}:{n}', 'what': what, 'exit': code,
                      'diffs': diffs, 'seconds': time.perf_counter() - started})
      log(f"  {'identical' if not diffs else 'DIFFERS: ' + '; '.join(diffs)}")
  return results


def table(results: list[dict[str, Any]]) -> str:
  lines = [f"{'config':<15}{'kill point':<30}{'result':<11}where",
           *(f"{r['config']:<15}{r['point']:<30}{'identical' if not r['diffs'] else 'DIFFERS':<11}"
             f"{r['what']}" + ('' if not r['diffs'] else f" [{'; '.join(r['diffs'])}]")
             for r in results)]
  tried = len(results)
  killed = sum(r['exit'] == faults.EXIT_CODE for r in results)
  identical = sum(not r['diffs'] for r in results)
  lines.append(f'tried {tried}, killed at the point {killed}, identical after resume {identical}, '
               f'differing {tried - identical}')
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--only', choices=CONFIGS, action='append')
  parser.add_argument('--dir', help='where the runs go (default: a new temporary directory)')
  parser.add_argument('--run', choices=CONFIGS, help=argparse.SUPPRESS)
  parser.add_argument('--workdir', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.run:  # the subprocess of one trial
    train.train_and_evaluate(tiny_config(args.run), args.workdir)
    return 0
  results = run_battery(args.only or CONFIGS, args.dir, log=lambda s: print(s, flush=True))
  print(table(results))
  return 0 if all(not r['diffs'] for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
