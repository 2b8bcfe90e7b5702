"""What Gradient Blending costs over naive joint training, on the same model and batches.

    nice -n 10 python benchmarks/gblend_cost.py              # step ratios (issue 12 item 1)
    nice -n 10 python benchmarks/gblend_cost.py --whole_runs  # and whole-run wall times

1. Per-step time of the compiled train step of ``gblend`` with the in-step ``gradient``
   estimator over ``vanilla`` on the same model and batches, for k = 2, 3, 4, 6 modalities
   (UCI Multiple Features views, MLP encoders, batch 64) and ``estimate_every`` m = 1, 10
   (m = 10: the amortised cost of an estimate every 10 steps), and on Colored-and-gray MNIST
   (CNN encoders, smoke size); all in one interleaved run
   (:func:`benchmarks.timing.compare_train_steps`: every step compiled first, then timed in
   alternating rounds, best round kept), with XLA's FLOP count of each compiled step (its
   cost analysis; for m = 10 it counts the costlier branch of the ``lax.cond``, so only the time is
   the amortised cost). On code without ``estimate_every`` only m = 1 is run.
2. ``--whole_runs``: wall time of whole runs of the same length on UCI-MF ``fou`` + ``pix``:
   ``vanilla``, ``gblend`` online with the estimation copies vmapped and sequential, and
   ``gblend`` gradient. The paper's online procedure trains ``(k + 1) * n`` extra epochs per
   super-epoch of ``n`` epochs.
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
from configs import cgmnist, ucimf  # noqa: E402  pylint: disable=wrong-import-position
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


VIEWS_BY_K = {2: 'fou+pix', 3: 'fou+pix+kar', 4: 'fou+pix+kar+fac', 6: 'fou+fac+kar+pix+zer+mor'}


def config_for(method: str, num_epochs: int, views: str = 'fou+pix', **options):
  name, _, estimator = method.partition(':')
  config = ucimf.get_config(f'views={views},method={name}'
                            + (f',estimator={estimator}' if estimator else ''))
  config.num_epochs = num_epochs
  config.progress_bar = False
  config.method.update(options)
  return config


def cnn_config(method: str, **options):
  name, _, estimator = method.partition(':')
  config = cgmnist.get_config(f'smoke,encoder=cnn,method={name}'
                              + (f',estimator={estimator}' if estimator else ''))
  config.progress_bar = False
  config.method.update(options)
  return config


def step_ratios(steps: int, rounds: int) -> str:
  """The table of part 1: ms/step and the ratio to the same model's vanilla step."""
  every = (1, 10) if 'estimate_every' in GradientBlending.DEFAULTS else (1,)
  configs, baseline = {}, {}
  for k, views in VIEWS_BY_K.items():
    configs[f'ucimf k={k} vanilla'] = config_for('vanilla', 1, views)
    for m in every:
      options = {'estimate_every': m} if m > 1 else {}
      name = f'ucimf k={k} gradient m={m}'
      configs[name] = config_for('gblend:gradient', 1, views, **options)
      baseline[name] = f'ucimf k={k} vanilla'
  configs['cgmnist cnn vanilla'] = cnn_config('vanilla')
  for m in every:
    options = {'estimate_every': m} if m > 1 else {}
    configs[f'cgmnist cnn gradient m={m}'] = cnn_config('gblend:gradient', **options)
    baseline[f'cgmnist cnn gradient m={m}'] = 'cgmnist cnn vanilla'
  results = compare_train_steps(configs, steps=steps, rounds=rounds)
  lines = [f'backend {jax.default_backend()}: {jax.devices()[0].device_kind}; {steps} steps x '
           f'{rounds} interleaved rounds, best round; load average {os.getloadavg()[0]:.1f} at the end',
           '| train step | batch | ms/step | x vanilla | MFLOP (XLA) | FLOP x vanilla | compile s |',
           '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    base = results[baseline.get(name, name)]
    flop_ratio = f"{r['flops'] / base['flops']:.2f}" if base['flops'] else '-'
    if name.endswith('m=10'):
      flop_ratio = '(estimating branch)'
    lines.append(f"| {name} | {configs[name].batch_size} | {r['step_ms']:.2f} | "
                 f"{r['step_ms'] / base['step_ms']:.2f} | {r['flops'] / 1e6:.1f} | {flop_ratio} | "
                 f"{r['compile_s']:.1f} |")
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', type=int, default=15)
  parser.add_argument('--super_epoch', type=int, default=5)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--whole_runs', action='store_true')
  args = parser.parse_args()

  print(step_ratios(args.steps, args.rounds), flush=True)
  if not args.whole_runs:
    return
  base = compare_train_steps({'vanilla': config_for('vanilla', args.epochs)},
                             steps=args.steps, rounds=args.rounds)['vanilla']['step_ms']

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
