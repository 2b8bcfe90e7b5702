"""Batches from an in-memory :class:`~mmjax.data.dataset.Split`.

Batches are ``{'inputs': {modality: float32 [B, ...]}, 'label': int32 [B]}``.

- :class:`TrainIterator`: an endless, seeded stream of shuffled training batches, built on a
  ``grain.MapDataset`` over example indices, whose position is a small JSON-able state.
- :func:`eval_batches`: one ordered pass over a split in fixed-size, padded batches with a mask.
"""

from __future__ import annotations

from typing import Any, Iterator

import grain
import numpy as np

from mmjax.data.dataset import Split, check_int, derive_seed


class TrainIterator:
  """Endless shuffled training batches of one split.

  The stream is ``grain.MapDataset.range(N).shuffle(...).batch(batch_size,
  drop_remainder=True).repeat().map(split.batch)``, read by index. Grain shuffles the example
  indices of every epoch with its own permutation, cuts each epoch into ``steps_per_epoch`` full
  batches (the last ``N % batch_size`` examples of the epoch's order are dropped, a different few
  each epoch) and never mixes two epochs in one batch. Each batch is then gathered from the
  split's arrays with one vectorised indexing per modality. Batch ``k`` depends only on
  ``(split, batch_size, seed, k)``, so the iterator's state is the index of the next batch.

  Grain seeds epoch ``e`` with ``grain_seed + e``; ``grain_seed`` is a hash of ``seed`` so that
  runs with neighbouring seeds do not see the same epoch orders shifted by one epoch.

  Attributes:
    batch_size: examples per batch.
    seed: the shuffling seed.
    steps_per_epoch: ``N // batch_size``, the number of batches of one epoch.
  """

  def __init__(self, split: Split, batch_size: int, seed: int):
    self.batch_size = check_int('batch_size', batch_size, 1)
    if self.batch_size > len(split):
      raise ValueError(f'batch_size={batch_size} exceeds the {len(split)} examples of the split.')
    self.seed = check_int('seed', seed, 0)
    self.steps_per_epoch = len(split) // self.batch_size
    self._num_examples = len(split)
    self._batches = (grain.MapDataset.range(len(split))
                     .shuffle(seed=derive_seed(self.seed))
                     .batch(self.batch_size, drop_remainder=True)
                     .repeat()
                     .map(split.batch))
    self._step = 0

  @property
  def step(self) -> int:
    """The number of batches produced so far: the index of the next batch."""
    return self._step

  @property
  def epoch(self) -> int:
    """The epoch of the next batch, counting from 0."""
    return self._step // self.steps_per_epoch

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, Any]:
    batch = self._batches[self._step]
    self._step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    """The iterator's position and what it must be resumed with, as a JSON-able dict."""
    return {'step': self._step, 'seed': self.seed, 'batch_size': self.batch_size,
            'num_examples': self._num_examples}

  def set_state(self, state: dict[str, int]) -> None:
    """Resumes at the position of ``state``, taken from an iterator over the same stream."""
    expected = self.get_state()
    for key in ('seed', 'batch_size', 'num_examples'):
      if state.get(key) != expected[key]:
        raise ValueError(f'Cannot resume: the saved iterator state has {key}={state.get(key)!r} '
                         f'but this iterator has {key}={expected[key]!r}.')
    self._step = check_int('step', state.get('step'), 0)


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
  """One pass over ``split`` in order, as ``(batch, mask)`` pairs of exactly ``batch_size`` rows.

  The last batch is padded by repeating the split's last example, so every batch has the same
  shapes (one compilation of a jitted eval step); ``mask`` (bool ``[batch_size]``) is True on the
  real rows. Every example appears exactly once among the masked-in rows.
  """
  check_int('batch_size', batch_size, 1)
  return _padded_batches(split, batch_size)


def _padded_batches(split: Split, batch_size: int) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
  num_examples = len(split)
  for start in range(0, num_examples, batch_size):
    rows = np.arange(start, start + batch_size)
    mask = rows < num_examples
    yield split.batch(np.minimum(rows, num_examples - 1)), mask
