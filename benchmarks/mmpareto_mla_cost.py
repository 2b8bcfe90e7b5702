"""Per-step cost of MMPareto's and MLA's in-step work against vanilla.

    nice python benchmarks/mmpareto_mla_cost.py [--config cgmnist] [--encoder cnn] [--steps 20] [--rounds 3]

Times five train steps on the same batches, in one run (interleaved rounds, best round kept,
see `timing.compare_train_steps`):

- `vanilla`: the fused loss alone (late fusion);
- `uniform`: the fused plus every uni-modal loss, summed (the losses MMPareto trains with);
- `mmpareto`: the same losses, per-loss gradients (one forward, two backward passes through
  `per_head`), the per-encoder Pareto integration and the rescaling;
- `mla`: the shared-head model, one update per modality with the projector step;
- `mla_noproj`: `mla` with `projection=none` (what the official code runs).

Prints ms/step and the ratio of each to `vanilla`.
"""

from __future__ import annotations

import jax

from timing import compare_train_steps, step_cost_arguments


def main() -> None:
  args, config_for = step_cost_arguments(__doc__.split('\n')[0])
  configs = {
      'vanilla': config_for('method=vanilla'),
      'uniform': config_for('method=uniform'),
      'mmpareto': config_for('method=mmpareto'),
      'mla': config_for('method=mla'),
      'mla_noproj': config_for('method=mla,projection=none'),
  }
  results = compare_train_steps(configs, steps=args.steps, rounds=args.rounds)
  vanilla = configs['vanilla']
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): '
        f'{jax.devices()[0].device_kind}; {args.config}'
        f"{' encoder=' + args.encoder if args.encoder else ''}, batch {vanilla.batch_size}")
  print(f"{'method':<12}{'compile s':>11}{'ms/step':>10}{'x vanilla':>11}")
  for name, r in results.items():
    print(f"{name:<12}{r['compile_s']:>11.2f}{r['step_ms']:>10.2f}"
          f"{r['step_ms'] / results['vanilla']['step_ms']:>11.3f}")


if __name__ == '__main__':
  main()
