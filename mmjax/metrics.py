"""Metric writers: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars.

Every record carries ``step``, ``epoch`` and ``split`` (``train``, ``val``, ``test``) and flat
metric keys: ``loss/<head>``, ``accuracy/<head>`` and each method's own keys under its name
(``gblend/weight/<head>``, ``greedy/d_speed``, ...). TensorBoard gets the same scalars under
``<split>/<key>`` in ``tensorboard/``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _to_python(value: Any) -> float | int:
  """A Python scalar (NaN/Infinity stay as they are: json writes and reads them back)."""
  return np.asarray(value).item()


class MetricWriter:
  """Appends metric records to ``metrics.jsonl`` and TensorBoard event files of a run."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), flush_secs=30)

  def write(self, step: int, epoch: int, split: str, scalars: Mapping[str, Any]) -> dict:
    """Writes one record; returns it as written."""
    record = {'step': int(step), 'epoch': int(epoch), 'split': split}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      for key, value in record.items():
        if key not in ('step', 'epoch', 'split'):
          self._tb.add_scalar(f'{split}/{key}', value, global_step=int(step))
    return record

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads every record of a run's ``metrics.jsonl`` (an empty list when there is none).

  A last line that is not complete JSON yet (a run writing it right now) is left out.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      records.append(json.loads(lines[-1]))
    except json.JSONDecodeError:  # a line still being written by a running job
      pass
  return records


def truncate_metrics(workdir: str, last_step: int) -> None:
  """Drops records written after ``last_step``: used when a run resumes from a checkpoint.

  Records of the epochs a resumed run repeats are written again by that run, so
  ``metrics.jsonl`` of a resumed run equals that of an uninterrupted one.
  """
  records = read_metrics(workdir)
  kept = [r for r in records if r['step'] <= last_step]
  if len(kept) == len(records):
    return
  path = os.path.join(workdir, METRICS_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in kept)
  os.replace(tmp, path)


def select(records: Iterable[Mapping[str, Any]], split: str) -> list[Mapping[str, Any]]:
  """The records of one split, in the order written."""
  return [r for r in records if r['split'] == split]


def summarize(records: Sequence[Mapping[str, Any]], heads: Sequence[str],
              selection_head: str) -> dict[str, Any]:
  """Best-val accuracy per head and test accuracy at the best-val epoch, as training selects it.

  The best epoch has the highest val accuracy of ``selection_head`` (the earliest on ties), the
  rule of the best-val checkpoint in :func:`mmjax.train.train_and_evaluate`. A partial run is
  summarized as far as it goes: a head or a test record not written yet gives NaN. Returns
  ``{}`` when there is no val record.
  """
  val = [r for r in select(records, 'val') if f'accuracy/{selection_head}' in r]
  test = {r['epoch']: r for r in select(records, 'test')}
  if not val:
    return {}
  best = max(val, key=lambda r: (r[f'accuracy/{selection_head}'], -r['epoch']))
  nan = float('nan')
  return {
      'selection_head': selection_head,
      'best_epoch': best['epoch'],
      'epochs': max(r['epoch'] for r in val),
      'best_val': {h: max((r[f'accuracy/{h}'] for r in val if f'accuracy/{h}' in r), default=nan)
                   for h in heads},
      'test_at_best': {h: test.get(best['epoch'], {}).get(f'accuracy/{h}', nan) for h in heads},
      'final_test': {h: test[max(test)].get(f'accuracy/{h}', nan) if test else nan for h in heads},
  }
