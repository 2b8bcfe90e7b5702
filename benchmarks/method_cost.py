"""Per-step cost of every registered method against vanilla, per bundled config.

    nice -n 10 python benchmarks/method_cost.py [--configs synthetic,ucimf,cgmnist]
        [--methods all|M1,M2:KEY=VALUE,...] [--steps 20] [--rounds 5]

For each config, builds every method registered in :data:`mmjax.methods.METHODS` (so methods
added later are timed without a change here) as ``configs/NAME.py:method=M`` builds it, the
model the method asks for included (greedy's MMTM network), compiles all their train steps,
then times them in interleaved rounds, each method once per round in turn, keeping each one's
best round (:func:`timing.compare_train_steps`): a burst of load elsewhere hits all alike.
Prints one Markdown table per config: compile seconds, ms/step and the ratio to vanilla's
step. Host-side work between epochs (G-Blend's offline estimation runs) is not in a step and
not counted. A method whose config cannot be built with its defaults (``unimodal`` needs a
modality on some data) is listed with the reason. ``--methods`` also takes a method with options
in ``mmjax compare``'s syntax, e.g. ``agm:grad_clip=0`` or ``mla:projection=none``, timed as its
own row beside the method's defaults.
"""

from __future__ import annotations

import argparse
import importlib
import os

import jax

from timing import compare_train_steps  # also puts the repository root on sys.path

from mmjax import compare, methods, train  # noqa: E402  pylint: disable=wrong-import-position


def configs_for(config_name: str, names: list[str]) -> tuple[dict, dict[str, str]]:
  """``{method: config}`` for the methods that build with their defaults, and the reasons of
  those that do not."""
  module = importlib.import_module(f'configs.{config_name}')
  built, skipped = {}, {}
  for name in names:
    variant = compare.parse_method(name)
    arguments = ','.join([f'method={variant.name}'] + [f'{k}={v}' for k, v in variant.options])
    try:
      config = module.get_config(arguments)
      config.progress_bar = False
      train.Trainer(config)  # the method's own checks against the data and model
    except ValueError as e:
      skipped[name] = str(e)
      continue
    built[name] = config
  return built, skipped


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='synthetic,ucimf,cgmnist')
  parser.add_argument('--methods', default='all', help="comma-separated; 'all' is every registered method")
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  names = [n for entry in args.methods.split(',')
           for n in (sorted(methods.METHODS) if entry == 'all' else [entry])]
  names = ['vanilla'] + [n for n in names if n != 'vanilla']
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): '
        f'{jax.devices()[0].device_kind}; load average {os.getloadavg()[0]:.2f}')
  for config_name in args.configs.split(','):
    built, skipped = configs_for(config_name, names)
    results = compare_train_steps(built, steps=args.steps, rounds=args.rounds)
    base = results['vanilla']['step_ms']
    print(f'\n{config_name} (batch {built["vanilla"].batch_size}, {args.steps} steps x '
          f'{args.rounds} rounds, best round; load average {os.getloadavg()[0]:.2f})\n')
    print('| method | compile s | ms/step | × vanilla |\n|---|---|---|---|')
    for name, r in results.items():
      print(f"| {name} | {r['compile_s']:.2f} | {r['step_ms']:.2f} | {r['step_ms'] / base:.3f} |")
    for name, reason in skipped.items():
      print(f'| {name} | — | — | not built with defaults: {reason} |')


if __name__ == '__main__':
  main()
