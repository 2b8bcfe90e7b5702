"""Per-step cost of OGM-GE's in-step work against vanilla (Peng et al. 2022).

    nice python benchmarks/ogm_ge_cost.py [--config cgmnist] [--encoder cnn] [--steps 20] [--rounds 3]

Times four train steps on the same late-fusion model and batches, in one run (interleaved
rounds, best round kept, see `timing.compare_train_steps`):

- `vanilla`: the fused loss alone (the loss OGM-GE trains with);
- `ogm`: `ogm_ge` with `noise=none` (scores, ratios, coefficients, the scaling);
- `ogm_ge`: the default, plus the official code's per-tensor Gaussian noise;
- `ogm_ge_diag`: `noise=sgd_diagonal` (a second, chunked backward pass for the noise's scale).

Prints ms/step and the ratio of each to `vanilla`.
"""

from __future__ import annotations


import jax

from timing import compare_train_steps, step_cost_arguments


def main() -> None:
  args, config_for = step_cost_arguments(__doc__.split('\n')[0])
  configs = {
      'vanilla': config_for('method=vanilla'),
      'ogm': config_for('method=ogm_ge,noise=none'),
      'ogm_ge': config_for('method=ogm_ge'),
      'ogm_ge_diag': config_for('method=ogm_ge,noise=sgd_diagonal'),
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
