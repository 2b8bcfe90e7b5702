"""Train-step examples/s of every method on every bundled config, on whatever backend JAX has
(GPU, TPU or CPU), per compute dtype, and of the same-architecture PyTorch model where torch is
installed.

    nice -n 10 python benchmarks/accelerator.py --quick            # CPU: smoke-sized, seconds
    python benchmarks/accelerator.py --dtypes float32,bfloat16     # an accelerator: full size

Rows: (config, method, dtype). A config is ``NAME[:ARGS]``, ``ARGS`` the config file's own
arguments joined by ``,`` (``ucimf:views=fou+fac+kar``); ``cgmnist:encoder=resnet18`` is
Colored-and-gray MNIST with the ResNet-18 encoders of Wu et al. (2022) at the config's batch
size; ``audio_visual_standin[:batch=N,frames=N]`` (:mod:`benchmarks.audio_visual_standin`) is
the audio-visual literature's two ImageNet-stem ResNet-18s (``resnet18_spectrogram`` on a
257x188 spectrogram, ``resnet18_frames`` on 224x224 frames) on random inputs of CREMA-D's
shapes, with no data set to prepare. Each config's methods are
timed together in interleaved rounds (:func:`benchmarks.timing.compare_train_steps`, best round
kept), so ``x vanilla`` is a ratio measured in one run. ``--quick`` uses each config's ``smoke``
variant, fewer steps and one round: it proves the script runs, its numbers are not figures.

The PyTorch rows train the same architecture (:mod:`benchmarks.torch_models`) with the same
batch, optimizer and the vanilla objective (the fused loss plus probe heads on detached
features), the late-fusion model for ``vanilla`` and the MMTM model for ``greedy`` (its plain
step). ``torch / jax`` is the PyTorch step time over mmjax's vanilla (or plain MMTM) step.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from benchmarks.timing import compare_train_steps  # noqa: E402  pylint: disable=wrong-import-position

#: Every method, as ``name[:estimator]`` (G-Blend's ``online`` and ``offline`` estimators train
#: with the step of a fixed-weight method; ``gradient`` estimates in the step).
METHODS = ('vanilla', 'uniform', 'fixed', 'unimodal', 'gblend', 'gblend:gradient', 'greedy')
# (``unimodal`` trains the config's first modality alone.)
#: ``config name[:args]``: the bundled configs, Wu et al.'s ResNet-18 on CG-MNIST and the
#: audio-visual ResNet-18s on CREMA-D's shapes.
CONFIGS = ('synthetic', 'ucimf', 'cgmnist', 'cgmnist:encoder=resnet18', 'audio_visual_standin')
#: Configs that live in ``benchmarks/`` rather than ``configs/``.
BENCHMARK_CONFIGS = ('audio_visual_standin',)
#: The encoders :mod:`benchmarks.torch_models` has a PyTorch version of.
TORCH_ENCODERS = ('mlp', 'cnn', 'resnet18')


def make_config(config_name: str, method: str, dtype: str, quick: bool):
  module_name, _, config_args = config_name.partition(':')
  name, _, estimator = method.partition(':')
  arg = [f'method={name}'] + ([f'estimator={estimator}'] if estimator else [])
  arg += [config_args] if config_args else []
  arg += ['smoke'] if quick else []
  package = 'benchmarks' if module_name in BENCHMARK_CONFIGS else 'configs'
  config = importlib.import_module(f'{package}.{module_name}').get_config(','.join(arg))
  if name == 'unimodal' and not config.method.modality:  # its first modality alone
    config.method.modality = next(iter(config.model.encoders))
  config.model.dtype = dtype
  config.progress_bar = False
  return config


def torch_step_ms(config, steps: int, rounds: int) -> float | None:
  """Best ms per PyTorch train step of ``config``'s architecture, or None without torch or
  without a PyTorch version of its encoders."""
  if any(e['name'] not in TORCH_ENCODERS for e in config.model.encoders.values()):
    return None
  try:
    from benchmarks import torch_models  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch_models.time_vanilla_step(config, steps=steps, rounds=rounds)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=';'.join(CONFIGS), help='separated by ;')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--dtypes', default='float32', help='comma-separated: float32,bfloat16')
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--quick', action='store_true',
                      help="the configs' smoke variants, 5 steps, 1 round: proves it runs")
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch rows')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help="PyTorch's intra-op threads (0: its default, one per core); on a "
                      'loaded shared CPU, 1 avoids OpenMP spin-waiting that slows it 10x')
  args = parser.parse_args()
  steps, rounds = (5, 1) if args.quick else (args.steps, args.rounds)
  method_names = args.methods.split(',')
  device = jax.devices()[0]
  print(f'backend {jax.default_backend()}, {jax.device_count()} device(s): {device.device_kind}; '
        f"{'quick (smoke configs)' if args.quick else 'full configs'}, {steps} steps x {rounds} "
        'round(s)\n')
  try:
    import torch  # pylint: disable=import-outside-toplevel
    if args.torch_threads:
      torch.set_num_threads(args.torch_threads)
    torch_note = f'torch {torch.__version__} (threads {torch.get_num_threads()})'
  except ImportError:
    torch_note = 'torch is not installed: PyTorch rows skipped'
  if args.no_torch:
    torch_note = 'PyTorch rows skipped (--no_torch)'
  print('| config | method | dtype | batch | compile s | ms/step | examples/s | x vanilla |')
  print('|---|---|---|---|---|---|---|---|')
  torch_rows = []
  for config_name in args.configs.split(';'):
    for dtype in args.dtypes.split(','):
      configs = {m: make_config(config_name, m, dtype, args.quick) for m in method_names}
      results = compare_train_steps(configs, steps=steps, rounds=rounds)
      base = results[method_names[0]]['step_ms']
      for method, r in results.items():
        print(f"| {config_name} | {method} | {dtype} | {configs[method].batch_size} | "
              f"{r['compile_s']:.1f} | {r['step_ms']:.2f} | {r['examples_per_s']:.0f} | "
              f"{r['step_ms'] / base:.2f} |", flush=True)
      if dtype != 'float32' or args.no_torch:
        continue
      for method in ('vanilla', 'greedy'):
        if method in configs:
          start = time.perf_counter()
          ms = torch_step_ms(configs[method], steps, rounds)
          if ms is not None:
            torch_rows.append((config_name, method, configs[method].batch_size, ms,
                               results[method]['step_ms'], time.perf_counter() - start))
  print(f'\nPyTorch, same architecture, vanilla objective: {torch_note}')
  if torch_rows:
    print('| config | model of | batch | torch ms/step | torch examples/s | torch / jax |')
    print('|---|---|---|---|---|---|')
    for config_name, method, batch, ms, jax_ms, _ in torch_rows:
      print(f'| {config_name} | {method} | {batch} | {ms:.2f} | {1e3 * batch / ms:.0f} | '
            f'{ms / jax_ms:.2f} |')


if __name__ == '__main__':
  main()
