"""Per-step cost of AGM's and PMR's in-step work against vanilla (Li et al. 2023; Fan et al. 2023).

    nice python benchmarks/agm_pmr_cost.py [--config cgmnist] [--encoder cnn] [--steps 20] [--rounds 3]

Times five train steps on the same late-fusion model and batches, in one run (interleaved
rounds, best round kept, see `timing.compare_train_steps`):

- `vanilla`: the fused loss alone (the loss both methods train with);
- `agm`: `agm` with its defaults (two masked evaluation-mode passes for two modalities, the
  responses, scores, coefficients and the official clipping);
- `agm_noclip`: `agm` with `grad_clip=0`;
- `pmr`: `pmr` with its defaults (distances to the prototypes, prototype cross-entropy and
  entropy); the per-epoch prototype pass is not a step cost and is not timed here;
- `pmr_ema`: `pmr` with `prototype_update=ema` (class sums of the batch and the EMA in the step).

Prints ms/step and the ratio of each to `vanilla`.
"""

from __future__ import annotations

import jax

from timing import compare_train_steps, step_cost_arguments


def main() -> None:
  args, config_for = step_cost_arguments(__doc__.split('\n')[0])
  configs = {
      'vanilla': config_for('method=vanilla'),
      'agm': config_for('method=agm'),
      'agm_noclip': config_for('method=agm,grad_clip=0.0'),
      'pmr': config_for('method=pmr'),
      'pmr_ema': config_for('method=pmr,prototype_update=ema'),
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
