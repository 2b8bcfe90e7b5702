"""Reading run directories: ``config.json``, ``metrics.jsonl`` and ``summary.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Sequence

import numpy as np

from mmjax import metrics

#: The resolved config a run stores in its workdir (:data:`mmjax.train.CONFIG_FILE`).
CONFIG_FILE = 'config.json'


class NotARunError(ValueError):
  """A directory that holds no ``config.json``."""


class NoMetricsError(ValueError):
  """A run directory whose ``metrics.jsonl`` is missing or empty."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run directory read from disk.

  Attributes:
    workdir: the run directory.
    name: a short label for tables and legends (by default the directory's base name).
    config: the resolved config (``config.json``).
    records: the ``metrics.jsonl`` records in the order written.
    summary: the run's ``summary.json`` (selection head, plots, best and final numbers), or
      None for a run that has none (one written before summaries existed, or a copy of the
      records alone).
  """
  workdir: str
  name: str
  config: dict[str, Any]
  records: list[dict[str, Any]]
  summary: dict[str, Any] | None = None

  @property
  def method(self) -> str:
    return self.config['method']['name']

  @property
  def seed(self) -> int:
    return self.config['seed']

  @property
  def heads(self) -> tuple[str, ...]:
    """The heads with an accuracy in the records: ``fused`` first, then the modalities."""
    return head_order(k.split('/', 1)[1] for r in self.records for k in r
                       if k.startswith('accuracy/'))

  @property
  def selection_head(self) -> str:
    """The head whose val accuracy selects the best epoch (``summary.json``; ``fused`` without)."""
    return self.summary['selection_head'] if self.summary else 'fused'

  def series(self, key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` over the records of ``split`` that hold it, in order."""
    rows = [(r['epoch'], r[key]) for r in metrics.select(self.records, split) if key in r]
    epochs = np.array([e for e, _ in rows], dtype=float)
    return epochs, np.array([v for _, v in rows], dtype=float)

  def keys(self, prefix: str, split: str | None = None) -> list[str]:
    """The metric keys starting with ``prefix`` (in ``split``'s records when given).

    Sorted by what follows the prefix, ``fused`` first.
    """
    records = self.records if split is None else metrics.select(self.records, split)
    found = {k[len(prefix):] for r in records for k in r if k.startswith(prefix)}
    return [prefix + name for name in head_order(found)]


def head_order(names: Iterable[str]) -> tuple[str, ...]:
  """Distinct head (or modality) names, ``fused`` first, then alphabetical."""
  return tuple(sorted(set(names), key=lambda h: (h != 'fused', h)))


def load_run(workdir: str | os.PathLike, name: str | None = None) -> Run:
  """Reads a run directory; raises a clear error for a directory that is not a run or has no metrics.

  A partial run (still training, or stopped) is read as far as it goes.
  """
  workdir = os.fspath(workdir)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(config_path):
    what = 'does not exist' if not os.path.exists(workdir) else f'has no {CONFIG_FILE}'
    raise NotARunError(
        f'{workdir!r} is not an mmjax run directory: it {what}. Pass the --workdir of a run '
        f'(python -m mmjax.main --config ... --workdir DIR).')
  with open(config_path, encoding='utf-8') as f:
    config = json.load(f)
  records = metrics.read_metrics(workdir)
  if not records:
    raise NoMetricsError(
        f'run {workdir!r} has no metrics yet: {metrics.METRICS_FILE} is missing or empty. A run '
        f'writes its first records when its first epoch ends (or G-Blend its first estimate).')
  return Run(workdir=workdir, name=name or os.path.basename(os.path.normpath(workdir)),
             config=config, records=records, summary=metrics.read_summary(workdir))


def load_runs(workdirs: Sequence[str | os.PathLike]) -> list[Run]:
  """Reads several runs, naming each by its path relative to the directories' common parent."""
  paths = [os.path.normpath(os.path.abspath(w)) for w in workdirs]
  if len(paths) > 1 and len(set(paths)) == len(paths):
    common = os.path.commonpath(paths)
    names = [os.path.relpath(p, common).replace(os.sep, '_') for p in paths]
  else:
    names = [os.path.basename(p) for p in paths]
  return [load_run(w, n) for w, n in zip(workdirs, names)]


def as_list(runs: Run | Sequence[Run]) -> list[Run]:
  """One run or several, as a list."""
  return [runs] if isinstance(runs, Run) else list(runs)
