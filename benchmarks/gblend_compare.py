"""The ``gradient`` estimator's weights against Algorithm 1's, from the same states of one run.

    nice python benchmarks/gblend_compare.py

Trains G-Blend with the ``gradient`` estimator and, at each super-epoch boundary of the online
schedule, also runs ``GB_Estimate(phi^N, n)`` (Algorithm 1, what ``online`` would do there)
from the current state, without letting it change the run. Prints both weight vectors.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.gblend_table import DATASETS  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import train  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods import ogr  # noqa: E402  pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dataset', default='synthetic-shortcut', choices=sorted(DATASETS))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  builder, _, epochs, schedule = DATASETS[args.dataset]
  config = builder(f'method=gblend,estimator=gradient,seed={args.seed}')
  config.num_epochs = epochs
  config.method.update(schedule)
  trainer = train.Trainer(config)
  method = trainer.method
  state = trainer.init_state()
  heads = method.heads
  lines = [f'{args.dataset}, seed {args.seed}: weights [{", ".join(heads)}]', '',
           '| epoch | gradient estimator (in force) | Algorithm 1 from the same state | '
           'OGR (Alg. 1) |', '|---|---|---|---|']
  boundaries = [0] + list(range(schedule['warmup_epochs'], epochs, schedule['super_epoch']))
  for epoch in range(epochs):
    state, _ = method.on_epoch_start(trainer.context, state, epoch)
    if epoch in boundaries:
      n = min(schedule['warmup_epochs'] if epoch == 0 else schedule['super_epoch'], epochs - epoch)
      measured = method.measure(trainer.context, state, epoch, n)
      online = np.asarray(ogr.blend_weights(measured['delta_g'], measured['delta_o'],
                                            method.min_delta_o, method.weight_rule))
      ratio = np.asarray(ogr.overfitting_to_generalization_ratio(
          measured['delta_g'], measured['delta_o'], method.min_delta_o))
      current = jax.device_get(state.method_state['weights'])
      fmt = lambda v: '[' + ', '.join(f'{float(x):.2f}' for x in v) + ']'  # noqa: E731
      lines.append(f'| {epoch} | {fmt(current[h] for h in heads)} | {fmt(online)} | '
                   f'{fmt(ratio)} |')
      print(lines[-1], flush=True)
    for _ in range(trainer.steps_per_epoch):
      state, _ = trainer.jit_train_step(state, trainer.next_batch())
  final = jax.device_get(state.method_state['weights'])
  lines.append(f'| {epochs} (end) | [' + ', '.join(f'{float(final[h]):.2f}' for h in heads)
               + '] | | |')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
