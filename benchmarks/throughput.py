"""Train-step throughput and compile time of the vanilla and uniform methods.

    python benchmarks/throughput.py [--steps 20] [--rounds 5] [--datasets cgmnist,ucimf]

Prints one row per (data set, method): compile time, milliseconds per step, examples per
second, and the step time over `vanilla`'s, measured in the same run (interleaved rounds,
best round kept).
"""

from __future__ import annotations

import argparse
import importlib

import jax

from timing import compare_train_steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--datasets', default='cgmnist,ucimf')
  parser.add_argument('--methods', default='vanilla,uniform')
  parser.add_argument('--rounds', type=int, default=5)
  args = parser.parse_args()
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()[0].device_kind}')
  print(f"{'data set':<10}{'method':<10}{'batch':>6}{'compile s':>11}{'ms/step':>10}"
        f"{'examples/s':>12}{'x vanilla':>11}")
  parser_methods = args.methods.split(',')
  for name in args.datasets.split(','):
    module = importlib.import_module(f'configs.{name}')
    configs = {}
    for method in parser_methods:
      configs[method] = module.get_config(f'method={method}')
      configs[method].progress_bar = False
    results = compare_train_steps(configs, steps=args.steps, rounds=args.rounds)
    base_ms = results[parser_methods[0]]['step_ms']
    for method, r in results.items():
      print(f"{name:<10}{method:<10}{configs[method].batch_size:>6}{r['compile_s']:>11.2f}"
            f"{r['step_ms']:>10.2f}{r['examples_per_s']:>12.0f}{r['step_ms'] / base_ms:>11.2f}")

if __name__ == '__main__':
  main()
