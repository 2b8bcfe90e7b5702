"""Batches of a split (in-memory :class:`~mmjax.data.dataset.Split` or record-backed
:class:`~mmjax.data.records.RecordSplit`), read through Grain.

Batches are ``{'inputs': {modality: float32 [B, ...]}, 'label': int32 [B]}``.

- :class:`TrainIterator`: an endless, seeded stream of shuffled training batches, built on a
  ``grain.MapDataset`` over example indices, whose position is a small JSON-able state.
- :func:`eval_batches`: one ordered pass over a split in fixed-size, padded batches with a mask.

Each host reads only its own rows of every global batch: with ``P`` JAX processes, process ``p``
reads rows ``[p * B / P, (p + 1) * B / P)`` of a global batch of ``B`` rows, the slice that
``Trainer.put_global`` places on that host's devices. A split's ``worker_count`` (0 for
in-memory arrays) sets how many Grain worker processes read the batches; the batches are the
same for any number of workers.
"""

from __future__ import annotations

import importlib.machinery
import sys
import weakref
from typing import Any, Iterator

import cloudpickle
import grain
import jax
import numpy as np
from absl import flags

from mmjax.data.dataset import check_int, derive_seed


def _host(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """``(process_index, process_count)``, by default JAX's."""
  count = jax.process_count() if process_count is None else check_int(
      'process_count', process_count, 1)
  index = jax.process_index() if process_index is None else check_int(
      'process_index', process_index, 0)
  if index >= count:
    raise ValueError(f'process_index={index} must be below process_count={count}.')
  return index, count


def _host_rows(global_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch of ``global_size`` that host ``process_index`` reads."""
  rows = global_size // process_count
  return slice(process_index * rows, (process_index + 1) * rows)


def _send_functions_by_value(split: Any) -> None:
  """Lets Grain's workers unpickle ``split``'s preprocess and augment functions.

  Grain sends the pipeline to its workers with cloudpickle, which pickles a function by
  reference (module and name) when its module is loaded. A module that a worker cannot import by
  name, such as a config file (ml_collections loads it as ``config_config``), is registered with
  cloudpickle to be pickled by value instead.
  """
  functions = [*getattr(split, 'preprocess', {}).values(), *getattr(split, 'augment', {}).values()]
  for function in functions:
    name = getattr(function, '__module__', None)
    if name is None or name == '__main__' or name not in sys.modules:
      continue
    top_level = name.split('.')[0]
    if (top_level not in sys.builtin_module_names
        and importlib.machinery.PathFinder.find_spec(top_level) is None):
      cloudpickle.register_pickle_by_value(sys.modules[name])


def _in_workers(dataset: grain.MapDataset, worker_count: int, split: Any) -> Iterator[Any]:
  """An iterator over ``dataset`` (batches of ``split``) that ``worker_count`` Grain processes
  compute."""
  if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; a library caller parsed none
    flags.FLAGS.mark_as_parsed()
  _send_functions_by_value(split)
  options = grain.MultiprocessingOptions(num_workers=worker_count)
  return iter(dataset.to_iter_dataset().mp_prefetch(options))


class _ReadTrainBatch:
  """``batch index k -> this host's rows of batch k``, augmented with one generator per example
  seeded by ``(augment_seed, k, row in the global batch)``.

  Batch ``k`` of an epoch of ``steps_per_epoch`` batches is the slice ``[j B, (j + 1) B)``
  (``j = k mod steps_per_epoch``) of that epoch's permutation of the example indices, drawn once
  per epoch (``numpy.random.Generator.permutation`` seeded by ``(shuffle_seed, epoch)``) and kept
  for the epoch's batches: ``O(N)`` once per epoch, not a per-index shuffle on every batch.
  """

  def __init__(self, split: Any, num_examples: int, batch_size: int, shuffle_seed: int,
               augment_seed: int, process_index: int, process_count: int):
    self.split = split
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.steps_per_epoch = num_examples // batch_size
    self.shuffle_seed = shuffle_seed
    self.augment_seed = augment_seed
    self.process_index = process_index
    self.process_count = process_count
    self._epoch: int | None = None
    self._order: np.ndarray | None = None

  def __getstate__(self) -> dict[str, Any]:  # Grain's workers draw their own permutations
    return {**self.__dict__, '_epoch': None, '_order': None}

  def epoch_order(self, epoch: int) -> np.ndarray:
    """The permutation of the example indices that epoch ``epoch`` reads in order."""
    if epoch != self._epoch:
      self._order = np.random.default_rng([self.shuffle_seed, epoch]).permutation(
          self.num_examples)
      self._epoch = epoch
    return self._order

  def indices(self, k: int) -> np.ndarray:
    """The global example indices of batch ``k``."""
    epoch, j = divmod(k, self.steps_per_epoch)
    return self.epoch_order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]

  def __call__(self, k: int, _: Any = None) -> dict[str, Any]:
    indices = self.indices(k)
    rows = _host_rows(len(indices), self.process_index, self.process_count)
    rngs = None
    if getattr(self.split, 'augment', None):
      rngs = [np.random.default_rng([self.augment_seed, k, row])
              for row in range(len(indices))[rows]]
    return self.split.batch(indices[rows], rngs)


class _ReadEvalBatch:
  """``batch index b -> (this host's rows of padded batch b, their mask)``."""

  def __init__(self, split: Any, batch_size: int, process_index: int, process_count: int):
    self.split = split
    self.batch_size = batch_size
    self.process_index = process_index
    self.process_count = process_count

  def __call__(self, b: int) -> tuple[dict[str, Any], np.ndarray]:
    rows = np.arange(b * self.batch_size, (b + 1) * self.batch_size)
    rows = rows[_host_rows(self.batch_size, self.process_index, self.process_count)]
    num_examples = len(self.split)
    return self.split.batch(np.minimum(rows, num_examples - 1)), rows < num_examples


class TrainIterator:
  """Endless shuffled training batches of one split.

  Epoch ``e`` reads the example indices in the order of one permutation, drawn once for the
  epoch (``numpy.random.default_rng([grain_seed, e]).permutation(N)``), cut into
  ``steps_per_epoch`` full batches (the last ``N % batch_size`` examples of the epoch's order are
  dropped, a different few each epoch); two epochs never mix in one batch. The stream is a
  ``grain.MapDataset`` over batch indices, ``range(steps_per_epoch).repeat()`` mapped to the
  batches' rows (``split.batch``): in-memory splits gather a batch with one vectorised indexing
  per modality; record splits read, preprocess and augment example by example, in Grain's
  worker processes when ``worker_count > 0`` (Grain prefetches ahead of the consumer there).
  Batch ``k`` depends only on ``(split, batch_size, seed, k)``, so the iterator's state is the
  index of the next batch, whatever the number of workers and hosts.

  ``grain_seed`` is a hash of ``seed`` so that runs with neighbouring seeds do not see the same
  epoch orders shifted by one epoch.

  Attributes:
    batch_size: examples per global batch; each host gets ``batch_size / process_count``.
    seed: the shuffling (and augmentation) seed.
    steps_per_epoch: ``N // batch_size``, the number of batches of one epoch.
    worker_count: Grain worker processes reading the batches (0: in-process, by index).
  """

  def __init__(self, split: Any, batch_size: int, seed: int, *, worker_count: int | None = None,
               process_index: int | None = None, process_count: int | None = None):
    self.batch_size = check_int('batch_size', batch_size, 1)
    if self.batch_size > len(split):
      raise ValueError(f'batch_size={batch_size} exceeds the {len(split)} examples of the split.')
    self.seed = check_int('seed', seed, 0)
    process_index, process_count = _host(process_index, process_count)
    if self.batch_size % process_count:
      raise ValueError(f'batch_size={batch_size} must be divisible by the {process_count} '
                       'processes that each read their share of a batch.')
    self.worker_count = check_int('worker_count', split.worker_count if worker_count is None
                                  else worker_count, 0)
    self.steps_per_epoch = len(split) // self.batch_size
    self._num_examples = len(split)
    self._split = split
    grain_seed = derive_seed(self.seed)
    self._read = _ReadTrainBatch(split, len(split), self.batch_size, grain_seed, grain_seed,
                                 process_index, process_count)
    self._batches = (grain.MapDataset.range(self.steps_per_epoch).repeat()
                     .map_with_index(self._read))
    self._step = 0
    self._workers: Iterator[Any] | None = None
    self._close_workers = None

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
    if not self.worker_count:
      batch = self._read(self._step)
    else:
      if self._workers is None:
        self._workers = _in_workers(self._batches[self._step:], self.worker_count,
                                    self._split)
        self._close_workers = weakref.finalize(self, self._workers.close)
      batch = next(self._workers)
    self._step += 1
    return batch

  def close(self) -> None:
    """Stops the worker processes, if any (the next batch starts new ones)."""
    if self._close_workers is not None:
      self._close_workers()
    self._workers = self._close_workers = None

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
    step = check_int('step', state.get('step'), 0)
    self.close()
    self._step = step


def eval_batches(split: Any, batch_size: int, *, worker_count: int | None = None,
                 process_index: int | None = None, process_count: int | None = None
                 ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
  """One pass over ``split`` in order, as ``(batch, mask)`` pairs of this host's rows.

  Global batches have exactly ``batch_size`` rows; the last one is padded by repeating the
  split's last example, so every batch has the same shapes (one compilation of a jitted eval
  step); ``mask`` (bool) is True on the real rows. Every example appears exactly once among the
  masked-in rows of all hosts. The batches are read through Grain, in ``worker_count`` worker
  processes (by default the split's).
  """
  check_int('batch_size', batch_size, 1)
  process_index, process_count = _host(process_index, process_count)
  if batch_size % process_count:
    raise ValueError(f'batch_size={batch_size} must be divisible by the {process_count} '
                     'processes that each read their share of a batch.')
  worker_count = check_int('worker_count', split.worker_count if worker_count is None
                           else worker_count, 0)
  num_batches = -(-len(split) // batch_size)
  batches = grain.MapDataset.range(num_batches).map(
      _ReadEvalBatch(split, batch_size, process_index, process_count))
  return _eval_pass(batches, worker_count, split)


def _eval_pass(batches: grain.MapDataset, worker_count: int, split: Any
               ) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
  if not worker_count:
    yield from batches
    return
  iterator = _in_workers(batches, worker_count, split)
  try:
    yield from iterator
  finally:
    iterator.close()
