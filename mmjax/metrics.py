"""Metric writers: one JSON object per line in ``metrics.jsonl`` plus TensorBoard scalars.

Every record carries ``step``, ``epoch`` and ``split`` (``train``, ``val``, ``test``) and flat
metric keys: ``loss/<head>``, ``accuracy/<head>`` and each method's own keys under its name
(``gblend/weight/<head>``, ``greedy/d_speed``, ...). TensorBoard gets the same scalars under
``<split>/<key>`` in ``tensorboard/``. ``summary.json`` (:func:`write_summary`) says what the
run is and how it went, for reports.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mmjax import faults

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
SUMMARY_FILE = 'summary.json'
#: Keys measured on the wall clock (train split): the only ones a resumed run cannot repeat.
TIMING_KEYS = ('steps_per_second',)


_WRITER_IDS = itertools.count(1)


def without_timing(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The records without :data:`TIMING_KEYS`: what a resumed run must reproduce exactly."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _to_python(value: Any) -> float | int:
  """A Python scalar (NaN/Infinity stay as they are: json writes and reads them back)."""
  return np.asarray(value).item()


class MetricWriter:
  """Appends metric records to ``metrics.jsonl`` and TensorBoard event files of a run.

  ``records`` counts the records of the run so far (those already in the file on a resume):
  a checkpoint stores it, so that a resumed run keeps exactly the records written before that
  checkpoint (:func:`truncate_metrics`). A writer with ``enabled=False`` (the processes other
  than 0 of a multi-host run) counts records and writes nothing.
  """

  def __init__(self, workdir: str, tensorboard: bool = True, *, records: int = 0,
               enabled: bool = True):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.records = records
    self._enabled = enabled
    self._tb = _summary_writer(workdir) if tensorboard and enabled else None

  def write(self, step: int, epoch: int, split: str, scalars: Mapping[str, Any]) -> dict:
    """Writes one record; returns it as written."""
    record = {'step': int(step), 'epoch': int(epoch), 'split': split}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    self.records += 1
    if not self._enabled:
      return record
    with open(self.path, 'a', encoding='utf-8') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      _add_scalars(self._tb, record)
    faults.maybe_fail('metrics_record')
    return record

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _summary_writer(workdir: str, directory: str = TENSORBOARD_DIR):
  """A tensorboardX writer whose file name is unique (its default name has whole seconds only)."""
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  return SummaryWriter(os.path.join(workdir, directory), flush_secs=30,
                       filename_suffix=f'.{os.getpid()}.{next(_WRITER_IDS)}')


def _add_scalars(tb: Any, record: Mapping[str, Any]) -> None:
  for key, value in record.items():
    if key not in ('step', 'epoch', 'split'):
      tb.add_scalar(f"{record['split']}/{key}", value, global_step=int(record['step']))


def read_tensorboard_scalars(workdir: str) -> list[tuple[str, int, float]]:
  """Every scalar of a run's TensorBoard files as ``(tag, step, value)``, in the order written.

  Files are read in the order they were started (their first event's time), events in file
  order; the TFRecord framing is read directly (no TensorFlow needed).
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  tb_dir = os.path.join(workdir, TENSORBOARD_DIR)
  files = []
  for name in os.listdir(tb_dir) if os.path.isdir(tb_dir) else []:
    with open(os.path.join(tb_dir, name), 'rb') as f:
      raw = f.read()
    events, pos = [], 0
    while pos + 12 <= len(raw):
      (length,) = struct.unpack('<Q', raw[pos:pos + 8])
      if pos + 12 + length + 4 > len(raw):
        break  # a record torn by a crash
      events.append(event_pb2.Event.FromString(raw[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
    if events:
      files.append((events[0].wall_time, name, events))
  return [(value.tag, int(event.step), float(value.simple_value))
          for _, _, events in sorted(files) for event in events for value in event.summary.value]


def _parse_line(path: str, number: int, line: str) -> dict[str, Any]:
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}, line {number}: not a JSON metrics record ({e.msg}); the file is '
                     'damaged: repair or remove that line.') from None
  if not isinstance(record, dict) or not {'step', 'epoch', 'split'} <= set(record):
    raise ValueError(f'{path}, line {number}: a metrics record needs "step", "epoch" and '
                     f'"split"; got {line.strip()[:80]!r}.')
  return record


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """Reads every record of a run's ``metrics.jsonl`` (an empty list when there is none).

  A last line without its newline is the torn tail of a crash (or a record being written right
  now): it is left out when it is not complete JSON. Any other line that is not a record raises
  ValueError naming the file and the line number.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding='utf-8', errors='replace') as f:
    lines = f.read().split('\n')
  torn = lines.pop()  # '' when the file ends with a newline
  records = [_parse_line(path, i + 1, line) for i, line in enumerate(lines) if line.strip()]
  if torn.strip():
    try:
      records.append(_parse_line(path, len(lines) + 1, torn))
    except ValueError:
      pass
  return records


def truncate_metrics(workdir: str, num_records: int) -> None:
  """Keeps the first ``num_records`` records; rebuilds TensorBoard's scalars from them.

  A resumed run calls it with the record count stored in its checkpoint: what the run writes
  after that checkpoint (a G-Blend estimation record at the checkpoint's own step included) is
  written again by the resumed run, so its ``metrics.jsonl`` and TensorBoard scalars equal those
  of an uninterrupted run. A torn last line goes too. TensorBoard's event files are rewritten
  from the kept records (into a new folder that then replaces ``tensorboard/``), so points of a
  killed epoch, or points a crash kept from being flushed, are neither kept nor lost.
  (tensorboardX's ``purge_step`` cannot do this: TensorBoard then drops every event at or after
  that step, and a checkpoint's own val/test records share its step with the estimation record
  written after it.)
  """
  records = read_metrics(workdir)[:num_records]
  path = os.path.join(workdir, METRICS_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  os.replace(tmp, path)
  new_dir = TENSORBOARD_DIR + '.new'
  shutil.rmtree(os.path.join(workdir, new_dir), ignore_errors=True)
  tb = _summary_writer(workdir, new_dir)
  for record in records:
    _add_scalars(tb, record)
  tb.close()
  old = os.path.join(workdir, TENSORBOARD_DIR + '.old')
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(os.path.join(workdir, TENSORBOARD_DIR)):
    os.replace(os.path.join(workdir, TENSORBOARD_DIR), old)
  os.replace(os.path.join(workdir, new_dir), os.path.join(workdir, TENSORBOARD_DIR))
  shutil.rmtree(old, ignore_errors=True)


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


def write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
  """Writes ``summary.json`` (see :func:`mmjax.train.run_summary`) atomically; nothing when empty."""
  if not summary:
    return
  path = os.path.join(workdir, SUMMARY_FILE)
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  os.replace(path + '.tmp', path)


def read_summary(workdir: str) -> dict[str, Any] | None:
  """A run's ``summary.json``, or None where there is none (a run from before its first epoch
  ended); ValueError naming the file when it is not a JSON object."""
  path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      summary = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path} cannot be read as a run summary ({e}); delete it, and the next '
                     'epoch of the run writes it again.') from None
  if not isinstance(summary, dict):
    raise ValueError(f'{path} holds a JSON {type(summary).__name__}, not a run summary; delete it.')
  return summary
