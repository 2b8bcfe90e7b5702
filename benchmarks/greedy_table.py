"""Wu et al. (2022)'s claims on Colored-and-gray MNIST: greedy learning and guided re-balancing.

    nice python benchmarks/greedy_table.py --encoder mlp --epochs 5 --max_train_examples 6000 \
        --seeds 0,1,2 --out docs/greedy_table.md [--runs_dir DIR]

Trains the MMTM network with `greedy` in modes `off` (vanilla joint training), `random` (the
control) and `guided`, for every seed, and the gray digit alone (`unimodal`, modality=gray, the
same encoder) as the reference of what the gray modality supports. Colour predicts the label in
train and val and is random at test. Writes a Markdown table of means ± standard deviations over
seeds, from the last epoch of each run. With ``--runs_dir`` every run keeps its workdir there and
a rerun of the same command resumes unfinished runs and skips finished ones; without it the runs
live in a temporary directory.

- test accuracy of the fused prediction, and of f'_gray (the gray branch with colour replaced by
  its train mean);
- d_util = u(color|gray) - u(gray|color) on val (colour informative) and on test;
- d_speed at the end of training and the re-balancing steps per branch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import cgmnist  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import metrics, train  # noqa: E402  pylint: disable=wrong-import-position

MODES = ('off', 'random', 'guided')


def _run(arg: str, args: argparse.Namespace, workdir: str) -> dict[str, dict[str, float]]:
  config = cgmnist.get_config(f'{arg},encoder={args.encoder}')
  config.num_epochs = args.epochs
  config.data.max_train_examples = args.max_train_examples
  config.progress_bar = False
  train.train_and_evaluate(config, workdir)
  records = metrics.read_metrics(workdir)
  return {split: metrics.select(records, split)[-1] for split in ('train', 'val', 'test')}


def _cell(values: list[float], fmt: str = '.3f') -> str:
  return f'{np.mean(values):{fmt}} ± {np.std(values):{fmt}}'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--encoder', default='mlp')
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--max_train_examples', type=int, default=6000)
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--out', default='')
  parser.add_argument('--runs_dir', default='', help='keep each run here, to resume')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  start = time.time()
  rows = {}
  with tempfile.TemporaryDirectory() as scratch:
    tmp = args.runs_dir or scratch
    for seed in seeds:
      for mode in MODES:
        runs = rows.setdefault(mode, [])
        runs.append(_run(f'method=greedy,mode={mode},seed={seed}', args,
                         os.path.join(tmp, f'{mode}_{seed}')))
        print(f'{mode} seed {seed}: test acc {runs[-1]["test"]["accuracy/fused"]:.3f}, '
              f'val d_util {runs[-1]["val"]["greedy/d_util"]:.3f} '
              f'({time.time() - start:.0f} s)', flush=True)
      gray = rows.setdefault('gray alone', [])
      gray.append(_run(f'method=unimodal,modality=gray,seed={seed}', args,
                       os.path.join(tmp, f'gray_{seed}')))
  header = ('| mode | test acc (fused) | test acc f\'_gray | d_util val | d_util test | d_speed '
            '| re-balance gray | re-balance color |')
  lines = [header, '|' + '---|' * 8]
  for mode in MODES:
    runs = rows[mode]
    get = lambda split, key: [r[split][key] for r in runs]  # pylint: disable=cell-var-from-loop
    lines.append(
        f"| {mode} | {_cell(get('test', 'accuracy/fused'))} "
        f"| {_cell(get('test', 'greedy/acc_unimodal/gray'))} "
        f"| {_cell(get('val', 'greedy/d_util'))} | {_cell(get('test', 'greedy/d_util'))} "
        f"| {_cell(get('train', 'greedy/d_speed'))} "
        f"| {_cell(get('train', 'greedy/rebalance/gray'), '.0f')} "
        f"| {_cell(get('train', 'greedy/rebalance/color'), '.0f')} |")
  gray_acc = [r['test']['accuracy/gray'] for r in rows['gray alone']]
  lines.append(f'| gray alone (unimodal) | {_cell(gray_acc)} | | | | | | |')
  table = '\n'.join(lines)
  command = ('nice python benchmarks/greedy_table.py ' + ' '.join(
      f'--{k} {v}' for k, v in vars(args).items() if k not in ('out', 'runs_dir')))
  text = (f'{table}\n\n{len(seeds)} seeds, {args.epochs} epochs, encoder {args.encoder}, '
          f'{args.max_train_examples or "all"} train examples; {time.time() - start:.0f} s. '
          f'Command: `{command}`\n')
  print(text)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)


if __name__ == '__main__':
  main()
