"""Input pipeline vs train step: does each prepared data set's Grain pipeline feed its config?

    nice -n 10 python benchmarks/input_pipeline.py [--datasets mnist,modelnet40] [--examples 800]
        [--workers 0,2] [--batches 40] [--steps 3] [--config_args ARGS]

For every registered preparer (``mmjax.prepare.registered_preparers()``) that can write synthetic
raw files (a ``synthetic_raw(raw_dir, examples)`` method; the audio-visual sets add theirs), in
a temporary folder:

1. writes raw files at the real files' size and format (about ``--examples`` train examples);
2. runs ``mmjax prepare`` with each ``--workers`` count and prints examples/s of preparing;
3. builds the data set of the preparer's config (its ``config`` attribute, default
   ``configs/<name>.py``) on the prepared folder and prints examples/s of training batches of
   ``mmjax.data.TrainIterator`` (read, decode, preprocess, augment) with each Grain worker count;
4. times that config's compiled train step (``timing.time_train_step``; ``--steps 0`` skips it)
   and prints the examples/s it consumes (steps/s x batch).

The pipeline keeps up when its examples/s exceed the step's. Numbers depend on the machine and
its load: report them with the command and ``uptime``'s load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks import timing  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import data, prepare  # noqa: E402  pylint: disable=wrong-import-position


def load_config(spec: str, extra_args: str):
  """``configs/NAME.py[:ARGS]`` (plus ``extra_args``) -> its config, without progress bar."""
  path, _, arg = spec.partition(':')
  arg = ','.join(a for a in (arg, extra_args) if a)
  module_spec = importlib.util.spec_from_file_location('bench_config', os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.progress_bar = False
  return config


def rate(examples: int, seconds: float) -> str:
  return f'{examples / seconds:,.0f}'


def bench(name: str, entry, args, folder: str) -> None:
  preparer = entry.factory()
  raw = os.path.join(folder, name, 'raw')
  started = time.perf_counter()
  options = preparer.synthetic_raw(raw, args.examples)
  print(f'\n== {name}: synthetic raw files written in {time.perf_counter() - started:.1f} s')
  out = None
  for workers in args.workers:
    out = os.path.join(folder, name, f'prepared_{workers}')
    started = time.perf_counter()
    result = prepare.prepare(name, raw, out, options=options, workers=workers, progress=False)
    seconds = time.perf_counter() - started
    count = sum(result.counts.values())
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out)
               if f.endswith('.array_record'))
    print(f'prepare  workers={workers}: {count} examples in {seconds:.1f} s = '
          f'{rate(count, seconds)} examples/s; {size / count / 1e3:.1f} kB per example')

  config = load_config(getattr(preparer, 'config', f'configs/{name}.py'), args.config_args)
  config.data.path = out
  dataset = data.get_dataset(config.data, config.seed)
  batch = min(config.batch_size, len(dataset.splits['train']))
  config.batch_size = batch  # a small synthetic set: the step consumes what the pipeline makes
  for workers in args.workers:
    first, examples_per_s = timing.time_train_iterator(dataset.splits['train'], batch, workers,
                                                       args.batches)
    print(f'pipeline workers={workers}: batch {batch}, first batch {first:.2f} s, then '
          f'{examples_per_s:,.0f} examples/s')
  if not args.steps:
    return
  step = timing.time_train_step(config, steps=args.steps, warmup=1)
  print(f'train step ({config.model.get("name", "late_fusion")}, batch {config.batch_size}): '
        f'compile {step["compile_s"]:.1f} s, {step["step_ms"]:.1f} ms/step = '
        f'{step["examples_per_s"]:,.1f} examples/s consumed')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--datasets', default='', help='comma-separated; default: all that can')
  parser.add_argument('--examples', type=int, default=800)
  parser.add_argument('--workers', default='0,2')
  parser.add_argument('--batches', type=int, default=40)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--config_args', default='', help='extra config arguments, e.g. encoder=cnn')
  args = parser.parse_args()
  args.workers = [int(w) for w in args.workers.split(',')]
  entries = {n: e for n, e in prepare.registered_preparers().items()
             if hasattr(e.factory, 'synthetic_raw')}
  chosen = [d for d in args.datasets.split(',') if d] or sorted(entries)
  unknown = [d for d in chosen if d not in entries]
  if unknown:
    parser.error(f'{unknown[0]!r} cannot be benchmarked; these can: {sorted(entries)}')
  print(f'load average at start: {os.getloadavg()}')
  with tempfile.TemporaryDirectory() as folder:
    for name in chosen:
      bench(name, entries[name], args, folder)
  print(f'\nload average at end: {os.getloadavg()}')


if __name__ == '__main__':
  main()
