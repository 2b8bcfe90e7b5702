"""Gradient Blending against its baselines over 3 seeds, like Table 5 of Wang et al. (2020).

    nice python benchmarks/gblend_table.py --out docs/gblend_table.md

Runs, per data set and seed: each modality alone (``unimodal``), naive joint training
(``vanilla``), dropout on the fused features (``vanilla`` with ``model.fused_dropout``), equal
auxiliary losses (``uniform``) and G-Blend ``offline``, ``online`` and ``gradient``, each with
the paper's weight rule and with ``weight_rule=clamped`` (``--premise`` leaves out dropout: the
premise table of docs/gradient_blending.md). Writes a
Markdown table of test accuracy (mean ± std over seeds, at the best-val epoch; the fused head,
or the modality's head for ``unimodal``) and G-Blend's final weights. Data sets:

- ``synthetic-shortcut``: modality ``a`` strong but XOR-like (2 clusters per class), ``b``
  weak with a train-only label shortcut; naive joint training leans on the shortcut.
- ``synthetic-overfit``: 1,000 training examples; ``a`` strong but XOR-like (16 dims), ``b``
  weak and wide (512 dims), so a joint model can memorise the training set through ``b``.
- ``synthetic-noise``: as ``synthetic-overfit`` but ``b`` has 16 informative dims (signal 1.5)
  and 496 pure-noise features (``noise_dims``).
- ``ucimf``: UCI Multiple Features, views ``fou`` + ``pix``.

Runs live in ``--workdir/<data set>/<method>/seed<k>``; rerunning resumes (finished runs are
read back, not retrained).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import synthetic, ucimf  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import metrics, train  # noqa: E402  pylint: disable=wrong-import-position

SEEDS = (0, 1, 2)
METHODS = ('unimodal:{0}', 'unimodal:{1}', 'vanilla', 'dropout', 'uniform',
           'gblend:offline', 'gblend:online', 'gblend:gradient',
           'gblend:offline:clamped', 'gblend:online:clamped', 'gblend:gradient:clamped')
#: The premise table of docs/gradient_blending.md: the paper's rule and the old one.
PREMISE_METHODS = tuple(m for m in METHODS if m != 'dropout')


def synthetic_shortcut(arg: str):
  config = synthetic.get_config(arg)
  config.data.signal = (3.0, 1.0)
  config.data.clusters_per_class = (2, 1)
  config.data.shortcut = (0.0, 1.0)
  return config


def synthetic_overfit(arg: str):
  config = synthetic.get_config(arg)
  config.data.num_train = 1000
  config.data.dim = (16, 512)
  config.data.signal = (2.0, 1.0)
  config.data.clusters_per_class = (2, 1)
  return config


def synthetic_noise(arg: str):
  config = synthetic.get_config(arg)
  config.data.num_train = 1000
  config.data.dim = (16, 16)
  config.data.signal = (2.0, 1.5)
  config.data.clusters_per_class = (2, 1)
  config.data.noise_dims = (0, 496)
  return config


DATASETS = {
    # name: (config builder, modalities, epochs, G-Blend schedule)
    'synthetic-shortcut': (synthetic_shortcut, ('a', 'b'), 20,
                           {'warmup_epochs': 5, 'super_epoch': 5}),
    'synthetic-overfit': (synthetic_overfit, ('a', 'b'), 20,
                          {'warmup_epochs': 5, 'super_epoch': 5}),
    'synthetic-noise': (synthetic_noise, ('a', 'b'), 20,
                        {'warmup_epochs': 5, 'super_epoch': 5}),
    'ucimf': (ucimf.get_config, ('fou', 'pix'), 20, {'warmup_epochs': 5, 'super_epoch': 5}),
}
OFFLINE_ESTIMATION_EPOCHS = 5


def build_config(dataset: str, method: str, seed: int):
  builder, modalities, epochs, schedule = DATASETS[dataset]
  name, _, option = method.partition(':')
  option, _, rule = option.partition(':')
  if name == 'unimodal':
    arg = f'method=unimodal,modality={option.format(*modalities)}'
  elif name == 'gblend':
    arg = f'method=gblend,estimator={option}'
  else:
    arg = f"method={'vanilla' if name == 'dropout' else name}"
  config = builder(f'{arg},seed={seed}')
  config.num_epochs = epochs
  config.progress_bar = False
  if name == 'dropout':
    config.model.fused_dropout = 0.5
  if name == 'gblend':
    config.method.update(schedule)
    config.method.weight_rule = rule or 'paper'
    if option == 'offline':
      config.method.estimation_epochs = OFFLINE_ESTIMATION_EPOCHS
  return config


def run(dataset: str, method: str, seed: int, workdir: str) -> dict:
  """Trains (unless ``workdir`` holds the finished run) and reads the run's results back."""
  config = build_config(dataset, method, seed)
  start = time.perf_counter()
  records = metrics.read_metrics(workdir) if os.path.isdir(workdir) else []
  if max((r['epoch'] for r in records if r['split'] == 'test'), default=0) < config.num_epochs:
    train.train_and_evaluate(config, workdir)
    records = metrics.read_metrics(workdir)
  seconds = time.perf_counter() - start
  val, test = metrics.select(records, 'val'), metrics.select(records, 'test')
  test_at = {r['epoch']: r for r in test}
  heads = [k.split('/', 1)[1] for k in val[0] if k.startswith('accuracy/')]
  head = [h for h in heads if h != 'fused'][0] if method.startswith('unimodal') else 'fused'
  best = max(val, key=lambda r: (r[f'accuracy/{head}'], -r['epoch']))
  # Any head, chosen with its epoch on val accuracy: what the run offers at its best.
  best_head_epoch = max(((r[f'accuracy/{h}'], -r['epoch'], h) for r in val for h in heads))
  last_train = metrics.select(records, 'train')[-1]
  return {
      'test': test_at[best['epoch']][f'accuracy/{head}'],
      'best_head': best_head_epoch[2],
      'best_head_test': test_at[-best_head_epoch[1]][f'accuracy/{best_head_epoch[2]}'],
      'train_acc': last_train[f'accuracy/{head}'],
      'weights': {k.split('/')[-1]: v for k, v in last_train.items()
                  if k.startswith('gblend/weight/')},
      'seconds': seconds,
  }


def label(dataset: str, method: str) -> str:
  modalities = DATASETS[dataset][1]
  name, _, option = method.partition(':')
  option, _, rule = option.partition(':')
  if name == 'unimodal':
    return f'{option.format(*modalities)} only'
  return {'vanilla': 'naive joint (vanilla)', 'dropout': 'dropout 0.5 on fused features',
          'uniform': 'auxiliary losses (uniform)'}.get(
              name, f"G-Blend {option}, {rule or 'paper'} rule")


def table(results: dict) -> str:
  lines = []
  for dataset, by_method in results.items():
    modalities = DATASETS[dataset][1]
    heads = ('fused', *modalities)
    lines += [f'**{dataset}**: test accuracy (%) of the fused head (of the modality\'s head '
              f'for "only") at its best-val epoch, mean ± std over seeds '
              f'{", ".join(map(str, SEEDS))}; test accuracy of the run\'s best head and epoch '
              f'on val (any head); final train accuracy; G-Blend\'s final weights.', '',
              '| method | test acc | best head: test acc (head) | train acc | final weights ['
              + ', '.join(heads) + '] |', '|---|---|---|---|---|']
    for method, runs in by_method.items():
      test = np.array([r['test'] for r in runs])
      train_acc = np.array([r['train_acc'] for r in runs])
      weights = ''
      if runs[0]['weights']:
        mean = [np.mean([r['weights'][h] for r in runs]) for h in heads]
        weights = '[' + ', '.join(f'{w:.2f}' for w in mean) + ']'
      best = np.array([r['best_head_test'] for r in runs])
      chosen = '/'.join(sorted({r['best_head'] for r in runs}))
      lines.append(f'| {label(dataset, method)} | {100 * test.mean():.1f} ± {100 * test.std():.1f} '
                   f'| {100 * best.mean():.1f} ± {100 * best.std():.1f} ({chosen}) '
                   f'| {100 * train_acc.mean():.1f} | {weights} |')
    lines.append('')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', default='/tmp/gblend_table')
  parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'gblend_table.md'))
  parser.add_argument('--datasets', default=','.join(DATASETS))
  parser.add_argument('--premise', action='store_true',
                      help='the premise table of docs/gradient_blending.md: no dropout baseline')
  parser.add_argument('--epochs', type=int, default=0, help='override every data set\'s epochs')
  args = parser.parse_args()
  if args.epochs:
    for name, (builder, modalities, _, schedule) in list(DATASETS.items()):
      DATASETS[name] = (builder, modalities, args.epochs, schedule)
  results = {}
  start = time.perf_counter()
  for dataset in args.datasets.split(','):
    results[dataset] = {}
    for method in PREMISE_METHODS if args.premise else METHODS:
      results[dataset][method] = []
      for seed in SEEDS:
        workdir = os.path.join(args.workdir, dataset, method.replace(':', '-').format(0, 1),
                               f'seed{seed}')
        result = run(dataset, method, seed, workdir)
        results[dataset][method].append(result)
        print(json.dumps({'dataset': dataset, 'method': method, 'seed': seed, **result}),
              flush=True)
  command = ' '.join(['nice python benchmarks/gblend_table.py', *sys.argv[1:]])
  text = table(results) + f'\nCommand: `{command}`.\n'
  with open(args.out, 'w', encoding='utf-8') as f:
    f.write(text)
  print(text)
  print(f'{time.perf_counter() - start:.0f} s wall')


if __name__ == '__main__':
  main()
