"""Train-step throughput and compile time of the vanilla and uniform methods.

    python benchmarks/throughput.py [--steps 20] [--datasets cgmnist,ucimf]

Prints one row per (data set, method): compile time, milliseconds per step, examples per
second, and the step time of `uniform` over `vanilla` measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib

import jax

from timing import time_train_step


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--datasets', default='cgmnist,ucimf')
  parser.add_argument('--methods', default='vanilla,uniform')
  args = parser.parse_args()
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()[0].device_kind}')
  print(f"{'data set':<10}{'method':<10}{'batch':>6}{'compile s':>11}{'ms/step':>10}"
        f"{'examples/s':>12}{'x vanilla':>11}")
  for name in args.datasets.split(','):
    module = importlib.import_module(f'configs.{name}')
    base_ms = None
    for method in args.methods.split(','):
      config = module.get_config(f'method={method}')
      config.progress_bar = False
      r = time_train_step(config, steps=args.steps)
      base_ms = base_ms or r['step_ms']
      print(f"{name:<10}{method:<10}{config.batch_size:>6}{r['compile_s']:>11.2f}{r['step_ms']:>10.2f}"
            f"{r['examples_per_s']:>12.0f}{r['step_ms'] / base_ms:>11.2f}")


if __name__ == '__main__':
  main()
