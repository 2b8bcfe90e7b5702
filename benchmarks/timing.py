"""Shared timing helpers for the benchmark scripts (not tests: numbers depend on the machine).

Shared machines are noisy, so compare methods with :func:`compare_train_steps`: it compiles
every config's step first, then times them in interleaved rounds and keeps each one's best
round, so a burst of load elsewhere hits all of them alike.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from typing import Any, Callable, Mapping

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from mmjax import data, train  # noqa: E402  pylint: disable=wrong-import-position


class _StepRunner:
  """One config's compiled train step, its state and a fixed list of batches."""

  def __init__(self, config: Any, steps: int):
    self.config = config
    trainer = train.Trainer(config)
    self.state = trainer.init_state()
    self.batches = [trainer.next_batch() for _ in range(min(steps, trainer.steps_per_epoch))]
    start = time.perf_counter()
    self.step: Callable = trainer.jit_train_step.lower(self.state, self.batches[0]).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.step.cost_analysis()
    self.flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost or {}).get('flops', 0))

  def run(self, steps: int) -> float:
    """Seconds per step over ``steps`` steps, blocking once at the end."""
    state = self.state
    jax.block_until_ready(state)
    start = time.perf_counter()
    for i in range(steps):
      state, out = self.step(state, self.batches[i % len(self.batches)])
    jax.block_until_ready((state, out))
    self.state = state
    return (time.perf_counter() - start) / steps


def compare_train_steps(configs: Mapping[str, Any], steps: int = 20, rounds: int = 3,
                        warmup: int = 3) -> dict[str, dict[str, float]]:
  """Compile time, best ms/step, examples/s and XLA's FLOP count (of a
  ``lax.cond``, its costlier branch) of each config's train step, measured together."""
  runners = {name: _StepRunner(config, steps) for name, config in configs.items()}
  for runner in runners.values():
    runner.run(warmup)
  best = {name: float('inf') for name in runners}
  for _ in range(rounds):
    for name, runner in runners.items():
      best[name] = min(best[name], runner.run(steps))
  return {name: {'compile_s': runners[name].compile_s, 'step_ms': 1e3 * best[name],
                 'flops': runners[name].flops,
                 'examples_per_s': configs[name].batch_size / best[name]} for name in runners}


def time_train_step(config: Any, steps: int = 20, warmup: int = 3) -> dict[str, float]:
  """Compile time and steady-state throughput of one config's compiled train step."""
  return compare_train_steps({'run': config}, steps=steps, rounds=1, warmup=warmup)['run']


def step_cost_arguments(description: str) -> tuple[argparse.Namespace, Callable[[str], Any]]:
  """The command line of a step-cost script (``--config``, ``--encoder``, ``--steps``,
  ``--rounds``) and a function ``arg -> config`` of the chosen config file, without progress
  bar, with ``--encoder`` on cgmnist (``args.encoder`` is '' for the other configs)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument('--config', default='cgmnist', help='cgmnist, ucimf or synthetic')
  parser.add_argument('--encoder', default='cnn', help='cgmnist only: cnn, mlp or resnet18')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  module = importlib.import_module(f'configs.{args.config}')
  if args.config != 'cgmnist':
    args.encoder = ''

  def config_for(arg: str) -> Any:
    config = module.get_config(f'{arg},encoder={args.encoder}' if args.encoder else arg)
    config.progress_bar = False
    return config

  return args, config_for


def time_train_iterator(split: Any, batch_size: int, workers: int, batches: int
                        ) -> tuple[float, float]:
  """Seconds to the first batch of a :class:`mmjax.data.TrainIterator` over ``split`` with
  ``workers`` Grain worker processes (start-up included), and examples/s over the ``batches``
  batches after it."""
  iterator = data.TrainIterator(split, batch_size, seed=0, worker_count=workers)
  started = time.perf_counter()
  next(iterator)
  first = time.perf_counter() - started
  started = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  examples_per_s = batches * batch_size / (time.perf_counter() - started)
  iterator.close()
  return first, examples_per_s
