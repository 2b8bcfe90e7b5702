"""What Gradient Blending costs over naive joint training, on the same model and batches.

    nice python benchmarks/gblend_cost.py

1. Per-step time of the compiled train step of ``gblend`` (each estimator) over ``vanilla``,
   measured together in interleaved rounds (:func:`benchmarks.timing.compare_train_steps`).
   ``offline`` and ``online`` train with the same step as a fixed-weight method; ``gradient``
   computes every head's gradient on the batch and on a held-out batch in the step.
2. Wall time of whole runs of the same length: ``vanilla``, ``gblend`` online with the
   estimation copies vmapped and sequential, and ``gblend`` gradient. The paper's online
   procedure trains ``(k + 1) * n`` extra epochs per super-epoch of ``n`` epochs.

Data set: UCI Multiple Features, views ``fou`` + ``pix`` (MLP encoders, batch 64).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.timing import compare_train_steps  # noqa: E402  pylint: disable=wrong-import-position
from configs import ucimf  # noqa: E402  pylint: disable=wrong-import-position
from mmjax import methods, train  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods.gblend import GradientBlending  # noqa: E402  pylint: disable=wrong-import-position


class _TimedEstimation(GradientBlending):
  """G-Blend that adds the wall time of its host-side estimation to ``seconds``."""

  seconds = 0.0

  def on_epoch_start(self, ctx, state, epoch):
    start = time.perf_counter()
    state, logged = super().on_epoch_start(ctx, state, epoch)
    jax.block_until_ready(state)
    _TimedEstimation.seconds += time.perf_counter() - start
    return state, logged


def config_for(method: str, num_epochs: int, **options):
  name, _, estimator = method.partition(':')
  config = ucimf.get_config(f'method={name}' + (f',estimator={estimator}' if estimator else ''))
  config.num_epochs = num_epochs
  config.progress_bar = False
  config.method.update(options)
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=15)
  parser.add_argument('--super_epoch', type=int, default=5)
  parser.add_argument('--steps', type=int, default=20)
  args = parser.parse_args()

  steps = compare_train_steps({m: config_for(m, args.epochs) for m in (
      'vanilla', 'gblend:offline', 'gblend:online', 'gblend:gradient')}, steps=args.steps, rounds=5)
  base = steps['vanilla']['step_ms']
  lines = ['| train step | ms/step | × vanilla | compile s |', '|---|---|---|---|']
  for name, s in steps.items():
    lines.append(f"| {name} | {s['step_ms']:.2f} | {s['step_ms'] / base:.2f} | "
                 f"{s['compile_s']:.1f} |")
  print('\n'.join(lines), flush=True)

  schedule = {'warmup_epochs': args.super_epoch, 'super_epoch': args.super_epoch}
  runs = {
      'vanilla': config_for('vanilla', args.epochs),
      'gblend online (vmap)': config_for('gblend:online', args.epochs, **schedule),
      'gblend online (sequential)': config_for('gblend:online', args.epochs, estimation='sequential',
                                               **schedule),
      'gblend gradient': config_for('gblend:gradient', args.epochs),
  }
  walls, estimation = {}, {}
  methods.METHODS['gblend'] = _TimedEstimation
  for name, config in runs.items():
    _TimedEstimation.seconds = 0.0
    with tempfile.TemporaryDirectory() as workdir:
      start = time.perf_counter()
      train.train_and_evaluate(config, workdir)
      walls[name] = time.perf_counter() - start
    estimation[name] = _TimedEstimation.seconds
  methods.METHODS['gblend'] = GradientBlending
  steps_per_epoch = train.Trainer(runs['vanilla']).steps_per_epoch
  vanilla_epoch_s = steps_per_epoch * base / 1e3
  k_plus_1 = len(runs['vanilla'].model.encoders) + 1
  estimates = -(-args.epochs // args.super_epoch)
  paper = (args.epochs + estimates * k_plus_1 * args.super_epoch) / args.epochs
  lines = [f'\n| whole run ({args.epochs} epochs; online: estimate every {args.super_epoch}) '
           '| wall s | × vanilla | in estimation s (incl. its compiles) | that in vanilla step-time epochs |',
           '|---|---|---|---|---|']
  for name, wall in walls.items():
    lines.append(f"| {name} | {wall:.1f} | {wall / walls['vanilla']:.2f} | "
                 f"{estimation[name]:.1f} | {estimation[name] / vanilla_epoch_s:.0f} |")
  lines.append(f'\nThe paper\'s online schedule trains {args.epochs} + {estimates} × {k_plus_1} × '
               f'{args.super_epoch} epochs = {paper:.1f}× the epochs of a vanilla run. A vanilla '
               f'train epoch is {steps_per_epoch} steps × {base:.2f} ms = {vanilla_epoch_s:.3f} s '
               'of step time.')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
