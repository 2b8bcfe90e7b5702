"""Deterministic crash points for the fault battery (``benchmarks/fault_battery.py``) and tests.

Setting ``MMJAX_FAULT=<point>:<n>`` makes the process end at once with exit code 137 (what a
``kill -9`` gives) the ``n``-th time it reaches the named point, as a preemption at exactly that
place would. Without the variable :func:`maybe_fail` does nothing. ``MMJAX_FAULT_TRACE=<file>`` appends the
name of every point reached to ``<file>``, one a line, so a battery can find the ``n`` that stops
a run at a chosen place (e.g. inside the second G-Blend estimation). The points:

- ``train_step``: after a train step has been dispatched;
- ``shard``: after a batch was put on the devices (train, evaluation and G-Blend estimation
  batches alike, so ``shard:n`` can stop a run inside an estimation);
- ``eval_batch``: after one batch of an evaluation pass (also those of an estimation);
- ``epoch_start``: before a method's epoch-start hook (G-Blend's estimation);
- ``epoch_hook_done``: after that hook returned, before its record is written;
- ``metrics_record``: after a record was appended to ``metrics.jsonl`` and TensorBoard;
- ``checkpoint_before_commit``: a checkpoint's files are written, not yet committed (renamed);
- ``checkpoint_after_commit``: right after the commit, before older checkpoints are removed;
- ``checkpoint_saved``: after the loop handed a checkpoint to the (asynchronous) writer;
- ``epoch_end``: after an epoch's checkpoint and log line;
- ``prepare_shard``: ``mmjax prepare`` recorded a finished shard.
"""

from __future__ import annotations

import os
import sys

ENV_VAR = 'MMJAX_FAULT'
TRACE_ENV_VAR = 'MMJAX_FAULT_TRACE'
EXIT_CODE = 137
POINTS = ('train_step', 'shard', 'eval_batch', 'epoch_start', 'epoch_hook_done', 'metrics_record',
          'checkpoint_before_commit', 'checkpoint_after_commit', 'checkpoint_saved', 'epoch_end',
          'prepare_shard')

_hits: dict[str, int] = {}


def parse(spec: str) -> tuple[str, int]:
  """``'<point>:<n>'`` -> ``(point, n)``; raises ValueError naming what is valid."""
  point, _, count = spec.partition(':')
  if point not in POINTS or not count.isdigit() or int(count) < 1:
    raise ValueError(f'{ENV_VAR}={spec!r}: expected <point>:<n> with n >= 1 and a point in '
                     f'{list(POINTS)}.')
  return point, int(count)


def maybe_fail(point: str) -> None:
  """Ends the process (exit 137) at the ``n``-th arrival at ``point`` when ``MMJAX_FAULT`` says so."""
  trace = os.environ.get(TRACE_ENV_VAR)
  if trace:
    with open(trace, 'a', encoding='utf-8') as f:
      f.write(point + '\n')
  spec = os.environ.get(ENV_VAR)
  if not spec:
    return
  target, count = parse(spec)
  if point != target:
    return
  _hits[point] = _hits.get(point, 0) + 1
  if _hits[point] == count:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_CODE)  # pylint: disable=protected-access
