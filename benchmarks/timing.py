"""Shared timing helpers for the benchmark scripts (not tests: numbers depend on the machine)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from mmjax import train  # noqa: E402  pylint: disable=wrong-import-position


def time_train_step(config: Any, steps: int = 20, warmup: int = 3) -> dict[str, float]:
  """Compile time and steady-state throughput of one run's compiled train step.

  The step is compiled ahead of time (``lower().compile()``) so compile time is measured
  apart; then ``warmup`` steps run untimed and ``steps`` steps are timed on the same batch
  stream, blocking on the result once at the end.
  """
  trainer = train.Trainer(config)
  state = trainer.init_state()
  batch = trainer.next_batch()
  start = time.perf_counter()
  compiled = trainer.jit_train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  batches = [trainer.next_batch() for _ in range(min(steps, trainer.steps_per_epoch))]
  for i in range(warmup):
    state, _ = compiled(state, batches[i % len(batches)])
  jax.block_until_ready(state)
  start = time.perf_counter()
  for i in range(steps):
    state, out = compiled(state, batches[i % len(batches)])
  jax.block_until_ready((state, out))
  step_s = (time.perf_counter() - start) / steps
  return {'compile_s': compile_s, 'step_ms': 1e3 * step_s,
          'examples_per_s': config.batch_size / step_s}
