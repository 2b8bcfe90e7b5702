"""Record-backed splits, read lazily: :func:`from_records` and :class:`RecordSplit`.

A record source is anything with ``len(source)`` and ``source[i]`` returning one record, a
mapping that holds one array per modality and an integer label: a
``grain.RandomAccessDataSource`` (``grain.sources.ArrayRecordDataSource``, ...), a TFDS data
source (``tfds.data_source('name', split='train')``), or a list of dicts. ``features`` maps each
modality name to the record key that holds it, ``label_key`` names the label's key.

On read, each modality's array goes through its ``preprocess`` function (``x -> array``, every
split), then, in training batches only, its ``augment`` function (``(x, rng) -> array``), where
``rng`` is a ``numpy.random.Generator`` seeded by the run's seed, the batch's index and the
example's row in the global batch: the same augmentation whatever the number of workers or hosts,
and again after a resume. Both run where Grain reads the batches: in-process with
``worker_count = 0``, else in that many Grain worker processes (the functions must then be
picklable; functions defined in a module, a config file or a notebook are).

The labels of a split are read once, from the records' ``label_key``, the first time they are
needed (G-Blend's stratified held-out slice needs them before training), or given as
``labels={'train': array, ...}`` to skip that pass.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mmjax.data.arrays import check_labels, resolve_num_classes
from mmjax.data.dataset import SPLITS, MultiModalDataset, check_int, check_modalities

_LABEL_CHUNK = 1024  # records read at once when the labels are read

Preprocess = Callable[[np.ndarray], Any]
Augment = Callable[[np.ndarray, np.random.Generator], Any]


class RecordSplit:
  """One split of a data set whose examples are records of a random-access source.

  It offers what the rest of mmjax reads from a split (see
  :class:`~mmjax.data.dataset.MultiModalDataset`): ``len``, ``label``, ``modalities``,
  ``modality_shapes``, ``take(indices)``, ``batch(indices, rngs=None)``, ``worker_count``.

  Attributes:
    source: the record source.
    features: ``{modality: record key}``.
    label_key: the record key of the label.
    preprocess: ``{modality: x -> array}`` for the modalities that have one.
    augment: ``{modality: (x, rng) -> array}``, train batches only.
    worker_count: Grain worker processes that read its batches (0: in-process).
    split_name: the split's name, for messages.
    indices: the source's record index of each example of this split.
  """

  def __init__(self, source: Any, features: Mapping[str, str], label_key: str = 'label', *,
               preprocess: Mapping[str, Preprocess] | None = None,
               augment: Mapping[str, Augment] | None = None,
               labels: Any = None, worker_count: int = 0, split_name: str = 'records',
               indices: Any = None):
    self.split_name = split_name
    if not hasattr(source, '__len__') or not hasattr(source, '__getitem__'):
      raise ValueError(f'The {split_name} split: a record source needs len() and [index], got '
                       f'{type(source).__name__}.')
    self.source = source
    if not isinstance(features, Mapping) or not features:
      raise ValueError(f'features must map modality names to record keys, got {features!r}.')
    check_modalities('features', list(features))
    self.features = dict(features)
    self.label_key = label_key
    self.preprocess = self._per_modality('preprocess', preprocess)
    self.augment = self._per_modality('augment', augment)
    self.worker_count = check_int('worker_count', worker_count, 0)
    self.indices = (np.arange(len(source), dtype=np.int64) if indices is None
                    else np.asarray(indices, dtype=np.int64))
    self._label = None
    if labels is not None:
      self._label = check_labels(split_name, labels).astype(np.int32)
      self._label.flags.writeable = False
    if self._label is not None and len(self._label) != len(self.indices):
      raise ValueError(f'The {split_name} split: {len(self._label)} labels given for '
                       f'{len(self.indices)} records.')
    self._shapes: dict[str, tuple[int, ...]] | None = None

  def _per_modality(self, key: str, functions: Mapping[str, Callable[..., Any]] | None
                    ) -> dict[str, Callable[..., Any]]:
    functions = dict(functions or {})
    for modality, function in functions.items():
      if modality not in self.features:
        raise ValueError(f'{key}[{modality!r}]: not a modality; the modalities are '
                         f'{list(self.features)}.')
      if not callable(function):
        raise ValueError(f'{key}[{modality!r}] must be a function, got {function!r}.')
    return functions

  def __len__(self) -> int:
    return len(self.indices)

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.features)

  @property
  def label(self) -> np.ndarray:
    """int32 ``[N]``, read from the records' ``label_key`` once (or as given)."""
    if self._label is None:
      positions = [int(p) for p in self.indices]
      labels = [self._field(record, self.label_key, p)
                for start in range(0, len(positions), _LABEL_CHUNK)
                for p, record in zip(positions[start:start + _LABEL_CHUNK],
                                     self._read(positions[start:start + _LABEL_CHUNK]))]
      try:
        labels = np.asarray(labels)
      except ValueError as e:
        raise ValueError(f'The {self.split_name} split: the records\' {self.label_key!r} values '
                         f'are not one integer each ({e}).') from e
      self._label = check_labels(self.split_name, labels).astype(np.int32)
      self._label.flags.writeable = False
    return self._label

  @property
  def modality_shapes(self) -> dict[str, tuple[int, ...]]:
    """The per-example shape of each modality, after ``preprocess``, from the first record."""
    if self._shapes is None:
      if not len(self):
        raise ValueError(f'The {self.split_name} split has no examples; every split needs at '
                         'least one.')
      position = int(self.indices[0])
      first = self._example(self.source[position], position, None)
      self._shapes = {m: tuple(x.shape) for m, x in first.items()}
    return dict(self._shapes)

  def take(self, indices: Sequence[int] | np.ndarray) -> RecordSplit:
    """The examples at ``indices``, in that order, as a new split over the same source."""
    indices = np.asarray(indices, dtype=np.int64)
    taken = RecordSplit(self.source, self.features, self.label_key, preprocess=self.preprocess,
                        augment=self.augment, worker_count=self.worker_count,
                        split_name=self.split_name, indices=self.indices[indices],
                        labels=None if self._label is None else self._label[indices])
    taken._shapes = self._shapes  # pylint: disable=protected-access
    return taken

  def batch(self, indices: np.ndarray, rngs: Sequence[np.random.Generator] | None = None
            ) -> dict[str, Any]:
    """The examples at ``indices`` as ``{'inputs': {modality: float32 [B, ...]}, 'label': y}``.

    Each example is read from the source, preprocessed, and augmented with ``rngs[row]`` when
    ``rngs`` is given (training batches).
    """
    indices = np.asarray(indices, dtype=np.int64)
    positions = [int(self.indices[i]) for i in indices]
    records = self._read(positions)
    examples = [self._example(record, p, None if rngs is None else rngs[row])
                for row, (record, p) in enumerate(zip(records, positions))]
    shapes = self.modality_shapes
    inputs = {}
    for modality in self.features:
      for position, example in zip(positions, examples):
        if example[modality].shape != shapes[modality]:
          raise ValueError(f'The {self.split_name} split: record {position} gives {modality!r} of '
                           f'shape {example[modality].shape}, but the first record gives '
                           f'{shapes[modality]}; every example needs the same shape.')
      inputs[modality] = np.stack([example[modality] for example in examples])
    return {'inputs': inputs, 'label': self.label[indices]}

  def _read(self, positions: list[int]) -> list[Any]:
    """The source's records at ``positions``, in one read when the source can (ArrayRecord and
    TFDS sources have ``__getitems__``)."""
    if hasattr(self.source, '__getitems__'):
      return list(self.source.__getitems__(positions))
    return [self.source[p] for p in positions]

  def _field(self, record: Any, key: str, position: int) -> Any:
    """``record[key]``; a ``ValueError`` naming the split, record and key when it has none."""
    if not isinstance(record, Mapping):
      raise ValueError(f'The {self.split_name} split: record {int(position)} is a '
                       f'{type(record).__name__}, not a mapping of keys to arrays.')
    if key not in record:
      raise ValueError(f'The {self.split_name} split: record {int(position)} has no key {key!r}; '
                       f'its keys are {sorted(record)}.')
    return record[key]

  def _example(self, record: Any, position: int, rng: np.random.Generator | None
               ) -> dict[str, np.ndarray]:
    """Record ``position`` of the source as preprocessed (and, with ``rng``, augmented) float32
    arrays, ``{modality: x}``."""
    example = {}
    for modality, key in self.features.items():
      x = np.asarray(self._field(record, key, position))
      if modality in self.preprocess:
        x = np.asarray(self.preprocess[modality](x))
      if rng is not None and modality in self.augment:
        x = np.asarray(self.augment[modality](x, rng))
      if x.dtype.kind not in 'iuf':
        raise ValueError(f'The {self.split_name} split: record {position} gives {modality!r} '
                         f'(key {key!r}) of dtype {x.dtype}; inputs must be real numbers.')
      x = x.astype(np.float32)
      if not np.isfinite(x).all():
        raise ValueError(f'The {self.split_name} split: record {position} gives NaN or infinite '
                         f'{modality!r} inputs (key {key!r}).')
      example[modality] = x
    return example


def from_records(sources: Mapping[str, Any], features: Mapping[str, str],
                 label_key: str = 'label', *, name: str = 'records',
                 num_classes: int | None = None,
                 preprocess: Mapping[str, Preprocess] | None = None,
                 augment: Mapping[str, Augment] | None = None,
                 labels: Mapping[str, Any] | None = None,
                 worker_count: int = 0) -> MultiModalDataset:
  """A data set whose splits read records lazily from random-access sources.

  Args:
    sources: ``{'train': source, 'val': source, 'test': source}``; a source has ``len`` and
      ``source[i] -> {key: array}`` (a ``grain.RandomAccessDataSource``, a TFDS
      ``data_source``, a list of dicts).
    features: ``{modality: record key}``; the modality names (Python identifiers other than
      ``fused``) are the model's modalities, in this order.
    label_key: the record key of the integer label.
    name: the data set's name (shown in messages).
    num_classes: the number of classes; by default ``1 +`` the largest label of any split.
    preprocess: ``{modality: x -> array}``, applied to every example read (train and eval).
    augment: ``{modality: (x, rng) -> array}``, applied after ``preprocess`` to training examples
      only; ``rng`` is a per-example ``numpy.random.Generator``, seeded deterministically.
    labels: ``{split: int array [N]}`` to use instead of reading each split's labels from the
      records once.
    worker_count: Grain worker processes that read and preprocess batches; 0 reads in-process.

  Returns:
    The :class:`MultiModalDataset` of three :class:`RecordSplit` s.

  Raises:
    ValueError: naming the split, modality or key, for: a missing split, an empty split, a bad
      modality name, a record without a feature or label key, a non-numeric or non-finite first
      record, per-example shapes that differ between splits, labels that are not integers or lie
      outside ``[0, num_classes)``.
  """
  if not isinstance(sources, Mapping) or set(sources) != set(SPLITS):
    got = sorted(sources) if isinstance(sources, Mapping) else type(sources).__name__
    raise ValueError(f'sources must map each of {list(SPLITS)} to a record source, got {got}.')
  labels = dict(labels or {})
  unknown = sorted(set(labels) - set(SPLITS))
  if unknown:
    raise ValueError(f'labels[{unknown[0]!r}]: not a split; the splits are {list(SPLITS)}.')
  splits = {s: RecordSplit(sources[s], features, label_key, preprocess=preprocess,
                           augment=augment, labels=labels.get(s), worker_count=worker_count,
                           split_name=s)
            for s in SPLITS}
  for split_name, split in splits.items():
    if not len(split):
      raise ValueError(f'The {split_name} split has no examples; every split needs at least one.')
  resolved = resolve_num_classes({s: split.label for s, split in splits.items()}, num_classes)
  return MultiModalDataset(name, tuple(features), resolved, splits)
