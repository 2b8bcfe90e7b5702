"""Wall time of a G-Blend online run against a vanilla run of the same epochs, k = 2 and 6.

    nice -n 10 python benchmarks/gblend_online_wall.py [--epochs 15] [--super_epoch 5] [--rounds 2]

UCI Multiple Features with ``k`` views (``fou+pix``; all six views), MLP encoders, batch 64.
Every round runs, for each ``k``, the vanilla run and the online runs (one per
``method.estimation`` mode of ``--modes``) one after another; each run's wall time (start to
end of ``train_and_evaluate``, compiles included) keeps its best round. The online schedule
estimates before epoch 0 and then every ``super_epoch`` epochs, each estimation training the
``k + 1`` copies for ``super_epoch`` epochs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from configs import ucimf  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import train  # noqa: E402  pylint: disable=wrong-import-position

VIEWS = {2: 'fou+pix', 6: 'fou+fac+kar+pix+zer+mor'}


def config_for(views: str, method: str, epochs: int, super_epoch: int, mode: str | None):
  config = ucimf.get_config(f'views={views},method={method}')
  config.num_epochs = epochs
  config.progress_bar = False
  if method == 'gblend':
    config.method.estimator = 'online'
    config.method.warmup_epochs = super_epoch
    config.method.super_epoch = super_epoch
    if mode:
      config.method.estimation = mode
  return config


def wall_seconds(config) -> float:
  with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(io.StringIO()):
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    return time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=15)
  parser.add_argument('--super_epoch', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--ks', default='2,6')
  parser.add_argument('--modes', default='auto,vmap,sequential',
                      help='values of method.estimation to run ("default": leave it unset)')
  args = parser.parse_args()
  runs = {}
  for k in (int(k) for k in args.ks.split(',')):
    runs[(k, 'vanilla')] = config_for(VIEWS[k], 'vanilla', args.epochs, args.super_epoch, None)
    for mode in args.modes.split(','):
      runs[(k, f'online {mode}')] = config_for(
          VIEWS[k], 'gblend', args.epochs, args.super_epoch, None if mode == 'default' else mode)
  best = {key: float('inf') for key in runs}
  for _ in range(args.rounds):
    for key, config in runs.items():
      best[key] = min(best[key], wall_seconds(config))
  print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print(f'| k | run ({args.epochs} epochs, estimate every {args.super_epoch}) | wall s | × vanilla |')
  print('|---|---|---|---|')
  for (k, name), seconds in best.items():
    print(f'| {k} | {name} | {seconds:.1f} | {seconds / best[(k, "vanilla")]:.2f} |')


if __name__ == '__main__':
  main()
