"""Checkpoints through Orbax: the only module of mmjax that imports it.

A run keeps its checkpoints in one Orbax ``CheckpointManager`` over ``checkpoints/<step>/``.
Its preservation policy keeps the newest ``keep`` checkpoints (to resume) and, apart from them,
the one with the best validation accuracy, which is stored as the checkpoint's metric (ties go
to the earliest). Best and latest are therefore one set of atomically committed steps: no
crash can leave a "best" that disagrees with the metrics of the steps on disk.

Each checkpoint holds the train state (a pytree of arrays: params, optimiser state, method
state, RNG, step) and a small JSON item (the loop's position: data iterator, epoch, ...).
Saves are asynchronous; :meth:`Checkpointer.wait` blocks until they are committed.

On opening, unfinished saves of a crashed run (``*.orbax-checkpoint-tmp*``) are removed.
A checkpoint that does not restore (a truncated array file, garbled metadata, an emptied step
folder) is moved to ``checkpoints/corrupt/<step>-<time>/`` (never deleted) and the next older
one is restored instead, with one line on stderr saying so.

Run directories of mmjax before this layout (``checkpoints/latest/`` and
``checkpoints/best/``) are refused with a message: their checkpoints lack the metrics-file
position and the best metric a resume needs, so such a run is rerun in a new workdir.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import types
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mmjax import faults
from mmjax.errors import UserError

CORRUPT_DIR = 'corrupt'
TMP_SUFFIX = '.orbax-checkpoint-tmp'
LEGACY_DIRS = ('latest', 'best')


class _FaultPointTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic rename, with crash points around a step's commit (see :mod:`mmjax.faults`).

  Orbax finalizes each item folder of a step, then the step folder itself (``<step>.orbax-
  checkpoint-tmp-*`` renamed to ``<step>``): that last rename is the commit.
  """

  async def finalize(self, *args, **kwargs):
    is_step = self.get_final().name.isdigit()
    if is_step:
      faults.maybe_fail('checkpoint_before_commit')
    result = await super().finalize(*args, **kwargs)
    if is_step:
      faults.maybe_fail('checkpoint_after_commit')
    return result


class _NoMetricsWarningFilter(logging.Filter):
  """Drops Orbax's warning for a save without metrics: mid-epoch checkpoints have none on purpose."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Requested `tracked_metric`')


logging.getLogger('absl').addFilter(_NoMetricsWarningFilter())


def _best_key(metrics: dict[str, Any]) -> tuple[float, int]:
  """Sort key of checkpoints with a metric: higher val accuracy, then the earlier epoch."""
  return float(metrics['val_accuracy']), -int(metrics['epoch'])


class Checkpointer:
  """The latest ``keep`` checkpoints and the best-validation one of a run, in one manager."""

  def __init__(self, directory: str, keep: int | None = None):
    """Opens ``directory``; ``keep=None`` (a reader) keeps every step, removes nothing."""
    self.directory = os.path.abspath(directory)  # Orbax refuses relative paths.
    legacy = [d for d in LEGACY_DIRS if os.path.isdir(os.path.join(self.directory, d))]
    if legacy:
      raise UserError(
          f'{self.directory} holds checkpoints in the layout of an older mmjax '
          f'({"/, ".join(legacy)}/), which this version does not resume; rerun in a new '
          '--workdir.')
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep),
        checkpoint_managers.BestN(get_metric_fn=_best_key, reverse=False, n=1,
                                  keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, best_fn=_best_key, best_mode='max', create=True,
        temporary_path_class=_FaultPointTemporaryPath)
    self._remove_unfinished_saves()
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    if keep is not None:
      self._remove_unpreserved(policy)

  def _remove_unpreserved(self, policy: checkpoint_managers.PreservationPolicy) -> None:
    """Applies the preservation policy to the steps on disk.

    Orbax applies it after each save; a crash between a commit and that clean-up leaves older
    checkpoints behind, which a rerun with nothing left to save would otherwise keep.
    """
    infos = [types.SimpleNamespace(step=step, metrics=self._manager.metrics(step), time=None)
             for step in self.all_steps()]
    keep = policy.should_preserve(infos, context=checkpoint_managers.PreservationContext())
    for info, kept in zip(infos, keep):
      if not kept:
        self._manager.delete(info.step)

  def _remove_unfinished_saves(self) -> None:
    """Removes ``<step>.orbax-checkpoint-tmp*`` folders: saves a crash stopped before commit.

    (Orbax's own ``cleanup_tmp_directories`` runs in the background until the next save.)
    """
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if TMP_SUFFIX in name:
        shutil.rmtree(os.path.join(self.directory, name))

  def _set_aside(self, step: int, reason: str) -> None:
    if jax.process_index() == 0:
      aside = os.path.join(self.directory, CORRUPT_DIR, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), aside)
      print(f'mmjax: checkpoint step {step} in {self.directory} does not restore ({reason}); '
            f'moved to {aside}', file=sys.stderr, flush=True)
    self._manager.reload()

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The step of the best-validation checkpoint (highest val accuracy, earliest on ties)."""
    return self._manager.best_step()

  def save(self, step: int, state: Any, extra: dict[str, Any],
           val_accuracy: float | None = None) -> None:
    """Saves ``state`` and ``extra`` at ``step``; ``val_accuracy`` makes it a candidate for best.

    Checkpoints saved without ``val_accuracy`` (inside an epoch) are kept only while they are
    among the latest ``keep``.
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
    metrics = None
    if val_accuracy is not None:
      metrics = {'val_accuracy': float(val_accuracy), 'epoch': int(extra['epoch'])}
    self._manager.save(step, args=args, metrics=metrics, force=True)

  def _restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    if not isinstance(restored.extra, dict):
      raise ValueError(f'its JSON item is {type(restored.extra).__name__}, not an object')
    return restored.state, restored.extra

  def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint that restores, into the structure of ``target``.

    Newer checkpoints that fail are moved aside (one stderr line each), but only when an older
    one restores; when none does, the newest one's error is raised and nothing is moved.
    """
    steps = self.all_steps()[::-1]
    failures = []
    for step in steps:
      try:
        restored = self._restore(step, target)
      except Exception as e:  # pylint: disable=broad-except  # any Orbax/TensorStore/JSON failure
        message = ' '.join(str(e).split())
        failures.append((step, f'{type(e).__name__}: {message[:160]}'))
        continue
      for bad_step, reason in failures:
        self._set_aside(bad_step, reason)
      return restored
    if failures:
      step, reason = failures[0]
      raise UserError(f'no checkpoint in {self.directory} restores; the newest (step {step}) '
                       f'fails with {reason}')
    return None

  def restore_best(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the best-validation checkpoint, or returns None when there is none."""
    step = self.best_step()
    if step is None:
      return None
    return self._restore(step, target)

  def wait(self) -> None:
    """Blocks until every asynchronous save has been committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
