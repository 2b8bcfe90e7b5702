"""Per-step cost of greedy learning's in-step work on the MMTM network (Wu et al. 2022).

    nice -n 10 python benchmarks/greedy_cost.py [--config cgmnist] [--encoder cnn] [--steps 20] [--rounds 3]

Times three train steps on the same MMTM model and batches, in one run (interleaved rounds,
best round kept, see `timing.compare_train_steps`):

- `plain`: the `fixed` method with weights {fused: 0, each modality: 1}, the same loss
  sum_k CE(y_k) with none of greedy's machinery;
- `off`:    `greedy` with `mode=off` (learning speeds and running averages, never re-balances);
- `guided`: `greedy` with `mode=guided`: the trigger logic on top of `off`. Normal and
  re-balancing steps are one compiled program (the choice is a `where` on traced flags), so
  the timed steps stand for both.

Prints ms/step and the ratio of each to `off` and to `plain`, and XLA's FLOP count per step.
"""

from __future__ import annotations

import os

import jax

from timing import compare_train_steps, step_cost_arguments
from mmjax.methods import greedy  # pylint: disable=wrong-import-order


def main() -> None:
  args, config_for = step_cost_arguments(__doc__.split('\n')[0])
  configs = {
      'plain': config_for('method=fixed'),
      'off': config_for('method=greedy,mode=off'),
      'guided': config_for('method=greedy,mode=guided'),
  }
  plain = configs['plain']
  greedy.BalancedMultimodalLearning.adjust_config(plain)  # the same MMTM model
  plain.method.weights = {h: 0.0 if h == 'fused' else 1.0 for h in plain.method.weights}
  results = compare_train_steps(configs, steps=args.steps, rounds=args.rounds)
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): '
        f'{jax.devices()[0].device_kind}; {args.config}'
        f"{' encoder=' + args.encoder if args.encoder else ''}, batch {plain.batch_size}")
  print(f'load average {os.getloadavg()[0]:.1f} at the end')
  print(f"{'method':<8}{'compile s':>11}{'ms/step':>10}{'x off':>8}{'x plain':>9}{'MFLOP':>10}"
        f"{'FLOP x plain':>14}")
  for name, r in results.items():
    print(f"{name:<8}{r['compile_s']:>11.2f}{r['step_ms']:>10.2f}"
          f"{r['step_ms'] / results['off']['step_ms']:>8.3f}"
          f"{r['step_ms'] / results['plain']['step_ms']:>9.3f}{r['flops'] / 1e6:>10.1f}"
          f"{r['flops'] / max(results['plain']['flops'], 1.0):>14.4f}")


if __name__ == '__main__':
  main()
