"""The main job's table: Colored-and-gray MNIST with the `cgmnist` config, 3 seeds, resumable.

    nice -n 10 python benchmarks/cgmnist_table.py --runs_dir /tmp/cgmnist_runs --seeds 0,1,2 \
        --out docs/cgmnist_table.md

Runs `configs/cgmnist.py` (CNN encoders, 10 epochs, SGD) with `method=vanilla` (naive joint
training), `method=uniform` (joint plus the uni-modal losses), one modality alone
(`method=unimodal,modality=gray` and `modality=color`; the colour-only run is Kim et al.'s
colour-biased baseline) and `vanilla` again with val coloured like test
(`data.val_colors='random'`: the same training, another best-val epoch), for every seed, each in `RUNS_DIR/<run>_s<seed>`. A rerun of the same
command resumes every unfinished run from its checkpoint and skips finished ones, so the script
can be stopped at any time. Writes a Markdown table of means ± standard deviations over seeds of
the selected head's best val accuracy, test accuracy at the best-val epoch and test accuracy at
the final epoch, and of every head's final test accuracy.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import cgmnist  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import train  # noqa: E402  pylint: disable=wrong-import-position

RUNS = {
    'vanilla': ('method=vanilla', {}),
    'uniform': ('method=uniform', {}),
    'gray alone': ('method=unimodal,modality=gray', {}),
    'color alone': ('method=unimodal,modality=color', {}),
    'vanilla (val_colors=random)': ('method=vanilla', {'val_colors': 'random'}),
}
"""Row name -> (config argument, the seed added; data options set on top)."""


def _cell(values: list[float]) -> str:
  return f'{np.mean(values):.3f} ± {np.std(values):.3f}' if values else '—'


def run(name: str, seed: int, runs_dir: str) -> dict:
  arg, data_options = RUNS[name]
  config = cgmnist.get_config(f'{arg},seed={seed}')
  config.data.update(data_options)
  config.progress_bar = False
  workdir = os.path.join(runs_dir, f"{re.sub('[^a-z0-9]+', '_', name).strip('_')}_s{seed}")
  return train.train_and_evaluate(config, workdir)


def table(results: dict[str, list[dict]]) -> str:
  lines = ['| run | selected head | best val acc | test acc at best val | final test acc '
           '| final test: fused | gray | color |', '|' + '---|' * 8]
  for name, summaries in results.items():
    if not summaries:
      continue
    head = summaries[0]['selection_head']
    get = lambda part, h: [s[part][h] for s in summaries if h in s[part]]  # pylint: disable=cell-var-from-loop
    lines.append(
        f"| {name} | {head} | {_cell(get('best_val', head))} | {_cell(get('test_at_best', head))} "
        f"| {_cell(get('final_test', head))} | {_cell(get('final_test', 'fused'))} "
        f"| {_cell(get('final_test', 'gray'))} | {_cell(get('final_test', 'color'))} |")
  lines.append('')
  lines.append('Per seed (selected head: best val / test at best val / final test):')
  lines.append('')
  for name, summaries in results.items():
    cells = [f"{s['best_val'][s['selection_head']]:.3f} / {s['test_at_best'][s['selection_head']]:.3f}"
             f" / {s['final_test'][s['selection_head']]:.3f}" for s in summaries]
    lines.append(f"- {name}: {'; '.join(cells)}")
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs_dir', required=True, help='one workdir per run, kept for resuming')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--runs', default=','.join(RUNS), help='comma-separated row names')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  seeds = [int(s) for s in args.seeds.split(',')]
  names = [n for n in args.runs.split(',') if n]
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    parser.error(f'--runs: unknown run {unknown[0]!r}; valid runs are {list(RUNS)}')
  start = time.time()
  results: dict[str, list[dict]] = {n: [] for n in names}
  for seed in seeds:
    for name in names:
      summary = run(name, seed, args.runs_dir)
      results[name].append(summary)
      head = summary['selection_head']
      print(f"{name} seed {seed}: best val {summary['best_val'][head]:.3f}, test at best "
            f"{summary['test_at_best'][head]:.3f}, final test {summary['final_test'][head]:.3f} "
            f'({time.time() - start:.0f} s)', flush=True)
  command = (f'nice -n 10 python benchmarks/cgmnist_table.py --runs_dir RUNS_DIR --seeds '
             f'{args.seeds}' + ('' if args.runs == ','.join(RUNS) else f" --runs '{args.runs}'"))
  text = (f'{table(results)}\n\nMean ± std over seeds {args.seeds}; `configs/cgmnist.py` '
          f'defaults (CNN encoders, 10 epochs, SGD lr 0.01 momentum 0.9, batch 64, val coloured '
          f'like train unless the row says otherwise, test colours random). Command: '
          f'`{command}`\n')
  print(text)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)


if __name__ == '__main__':
  main()
