"""Checkpoints through Orbax: the only module of mmjax that imports it.

A run directory holds two checkpoint managers under ``checkpoints/``:

- ``latest/``: the newest checkpoints (the last ``keep`` of them), used to resume;
- ``best/``: the single checkpoint with the best validation accuracy, kept apart so that
  resuming never deletes it.

Each checkpoint holds the train state (a pytree of arrays: params, optimiser state, method
state, RNG, step) and a small JSON item (data-iterator position, epoch, best metric).
Saves are asynchronous; :meth:`Checkpointer.wait` blocks until they are on disk.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class _Manager:
  """One Orbax ``CheckpointManager`` holding ``state`` (arrays) and ``extra`` (JSON)."""

  def __init__(self, directory: str, keep: int):
    policy = ocp.checkpoint_managers.LatestN(keep)
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, extra: dict[str, Any]) -> None:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
    self._manager.save(step, args=args, force=True)

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(target), extra=ocp.args.JsonRestore())
    restored = self._manager.restore(step, args=args)
    return restored.state, restored.extra

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


class Checkpointer:
  """Saves and restores the latest and the best-validation checkpoints of a run."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)  # Orbax refuses relative paths.
    self._latest = _Manager(os.path.join(self.directory, 'latest'), keep)
    self._best = _Manager(os.path.join(self.directory, 'best'), 1)

  def latest_step(self) -> int | None:
    """The step of the newest checkpoint, or None when there is none."""
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return self._best.latest_step()

  def save(self, step: int, state: Any, extra: dict[str, Any]) -> None:
    """Saves ``state`` and ``extra`` as the latest checkpoint at ``step``."""
    self._latest.save(step, state, extra)

  def save_best(self, step: int, state: Any, extra: dict[str, Any]) -> None:
    """Replaces the best-validation checkpoint."""
    self._best.save(step, state, extra)

  def restore_latest(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint into the structure, dtypes and shardings of ``target``."""
    step = self.latest_step()
    if step is None:
      return None
    return self._latest.restore(step, target)

  def restore_best(self, target: Any) -> tuple[Any, dict[str, Any]] | None:
    step = self.best_step()
    if step is None:
      return None
    return self._best.restore(step, target)

  def wait(self) -> None:
    """Blocks until every asynchronous save has been written."""
    self._latest.wait()
    self._best.wait()

  def close(self) -> None:
    self._latest.close()
    self._best.close()
