"""In-memory multi-modal data sets: splits of ``{modality: array}`` inputs and integer labels.

Every data set of mmjax is built into a :class:`MultiModalDataset`: three :class:`Split` s
(``train``, ``val``, ``test``), each holding one float32 array per modality and an int32 label
array, all sharing the leading example axis. The arrays are read-only because data sets are
cached in-process and shared between callers; :meth:`Split.take` returns new arrays.

This module also holds the deterministic, class-stratified splitting used by the builders and by
Gradient Blending's held-out slice, and the option checks shared by the builders: each raises a
``ValueError`` that names the offending option.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping, Sequence

import numpy as np

SPLITS = ('train', 'val', 'test')


def _read_only(array: np.ndarray) -> np.ndarray:
  """A read-only view of ``array`` (the caller's own array keeps its flags)."""
  view = array.view()
  view.flags.writeable = False
  return view


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of a data set.

  Attributes:
    inputs: ``{modality: float32 array [N, ...]}``, in the data set's modality order.
    label: int32 array ``[N]``.
  """

  inputs: dict[str, np.ndarray]
  label: np.ndarray

  def __post_init__(self):
    label = np.asarray(self.label)
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise ValueError(f'label must be a 1-D integer array, got {label.dtype} {label.shape}.')
    if not self.inputs:
      raise ValueError('inputs must hold at least one modality.')
    inputs = {}
    for modality, array in self.inputs.items():
      array = np.asarray(array, dtype=np.float32)
      if array.ndim < 1 or array.shape[0] != label.shape[0]:
        raise ValueError(f'inputs[{modality!r}] has shape {array.shape}: '
                         f'{array.shape[0] if array.ndim else 0} examples, but label has '
                         f'{label.shape[0]}; every modality needs one row per label.')
      inputs[modality] = _read_only(array)
    object.__setattr__(self, 'inputs', inputs)
    object.__setattr__(self, 'label', _read_only(label.astype(np.int32, copy=False)))

  def __len__(self) -> int:
    return self.label.shape[0]

  worker_count = 0
  """Grain worker processes that read its batches: none, the arrays are in memory."""

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.inputs)

  @property
  def modality_shapes(self) -> dict[str, tuple[int, ...]]:
    """The shape of one example of each modality, ``{modality: shape}``."""
    return {m: tuple(x.shape[1:]) for m, x in self.inputs.items()}

  def take(self, indices: Sequence[int] | np.ndarray) -> Split:
    """The examples at ``indices``, in that order, as a new split."""
    indices = np.asarray(indices, dtype=np.int64)
    return Split({m: x[indices] for m, x in self.inputs.items()}, self.label[indices])

  def batch(self, indices: np.ndarray, rngs: Sequence[np.random.Generator] | None = None
            ) -> dict[str, Any]:
    """The examples at ``indices`` as a batch ``{'inputs': {modality: x}, 'label': y}``.

    ``rngs`` (one generator per example, for train-time augmentation) is not used: in-memory
    splits are not augmented.
    """
    del rngs
    return {'inputs': {m: x[indices] for m, x in self.inputs.items()},
            'label': self.label[indices]}


@dataclasses.dataclass(frozen=True, eq=False)
class MultiModalDataset:
  """A classification data set with several input modalities.

  Attributes:
    name: the data set's name, as given to ``get_dataset``.
    modalities: the modality names, in the order of the config.
    num_classes: labels lie in ``[0, num_classes)``.
    splits: ``{'train', 'val', 'test'}`` -> a split: an in-memory :class:`Split` or a
      record-backed :class:`~mmjax.data.records.RecordSplit`. Both offer what the rest of mmjax
      reads: ``len``, ``label`` (int32 ``[N]``), ``modalities``, ``modality_shapes``,
      ``take(indices)``, ``batch(indices, rngs=None)`` and ``worker_count``.
  """

  name: str
  modalities: tuple[str, ...]
  num_classes: int
  splits: dict[str, Any]

  def __post_init__(self):
    if tuple(self.splits) != SPLITS:
      raise ValueError(f'splits must be {SPLITS} in that order, got {tuple(self.splits)}.')
    for split_name, split in self.splits.items():
      check_split(split_name, split, self.modalities, self.num_classes)
    shapes = self.modality_shapes
    for split_name, split in self.splits.items():
      for modality, shape in split.modality_shapes.items():
        if tuple(shape) != tuple(shapes[modality]):
          raise ValueError(f'The {split_name} split has {modality!r} examples of shape '
                           f'{tuple(shape)}, but the train split has {tuple(shapes[modality])}; '
                           'every split needs the same per-example shapes.')

  @property
  def modality_shapes(self) -> dict[str, tuple[int, ...]]:
    """The shape of one example of each modality, ``{modality: shape}``."""
    return dict(self.splits['train'].modality_shapes)


def check_split(split_name: str, split: Any, modalities: Sequence[str], num_classes: int) -> None:
  """Checks a split at the door: its modalities, at least one example, labels in
  ``[0, num_classes)``, per-example shapes equal to the train split's, and, for in-memory
  splits, finite inputs (record splits check each example as they read it); a ``ValueError``
  names the split, modality and example.

  Vectorised: one pass over each array.
  """
  if tuple(split.modalities) != tuple(modalities):
    raise ValueError(f'The {split_name} split has modalities {tuple(split.modalities)}; '
                     f'expected {tuple(modalities)}.')
  if not len(split):
    raise ValueError(f'The {split_name} split has no examples; every split needs at least one.')
  bad = np.flatnonzero((split.label < 0) | (split.label >= num_classes))
  if bad.size:
    raise ValueError(f'The {split_name} split has {bad.size} labels outside [0, {num_classes}), '
                     f'the first {int(split.label[bad[0]])} at example {bad[0]}.')
  if not isinstance(split, Split):
    return
  for modality, x in split.inputs.items():
    finite = np.isfinite(x).reshape(len(split), -1).all(axis=1)
    if not finite.all():
      bad = np.flatnonzero(~finite)
      raise ValueError(f'The {split_name} split has NaN or infinite {modality!r} inputs in '
                       f'{bad.size} examples, the first at example {bad[0]}.')


def derive_seed(seed: int, *stream: int) -> int:
  """A 32-bit seed for the random stream ``stream`` of a build seeded with ``seed``."""
  return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


def stratified_split(labels: np.ndarray, fraction: float, seed: int, *,
                     key: str = 'fraction') -> tuple[np.ndarray, np.ndarray]:
  """Splits example indices into a kept part and a held-out part, stratified by class.

  The held-out part has ``round(fraction * N)`` examples. Each class contributes in proportion
  to its size (largest-remainder rounding), and which examples of a class are held out is drawn
  from ``seed``. The result depends only on ``(labels, fraction, seed)``.

  Args:
    labels: integer class labels ``[N]``.
    fraction: the share of examples to hold out, in the open interval (0, 1).
    seed: the seed of the draw.
    key: the name of ``fraction`` in error messages (the config option it came from).

  Returns:
    ``(keep_idx, heldout_idx)``: sorted int64 index arrays that partition ``range(N)``.
  """
  labels = np.asarray(labels)
  check_fraction(key, fraction)
  num_heldout = round(fraction * len(labels))
  if not 0 < num_heldout < len(labels):
    raise ValueError(f'{key}={fraction} of {len(labels)} examples leaves an empty part; '
                     f'both parts need at least one example.')
  classes, counts = np.unique(labels, return_counts=True)
  exact = fraction * counts
  quota = np.floor(exact).astype(np.int64)
  by_remainder = np.argsort(-(exact - quota), kind='stable')
  quota[by_remainder[:num_heldout - quota.sum()]] += 1
  order = np.random.default_rng(seed).permutation(len(labels))
  heldout = np.zeros(len(labels), dtype=bool)
  for cls, count in zip(classes, quota):
    heldout[order[labels[order] == cls][:count]] = True
  return np.flatnonzero(~heldout), np.flatnonzero(heldout)


def three_way_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stratified ``(train_idx, val_idx, test_idx)``, sorted, partitioning ``range(N)``.

  A ``test_fraction`` of all examples is the test part; a ``val_fraction`` of the rest (the
  training pool) is the val part; the remainder is the train part. The two draws use the
  seeds ``derive_seed(seed, 0)`` and ``derive_seed(seed, 1)``.
  """
  labels = np.asarray(labels)
  pool, test = stratified_split(labels, test_fraction, derive_seed(seed, 0), key='test_fraction')
  train, val = stratified_split(labels[pool], val_fraction, derive_seed(seed, 1),
                                key='val_fraction')
  return pool[train], pool[val], test


def check_fraction(key: str, value: Any) -> float:
  """``value`` as a float in the open interval (0, 1)."""
  if (not isinstance(value, numbers.Real) or isinstance(value, bool)
      or not 0 < value < 1):
    raise ValueError(f'{key} must be a number in the open interval (0, 1), got {value!r}.')
  return float(value)


def check_int(key: str, value: Any, minimum: int) -> int:
  """``value`` as an int no smaller than ``minimum``."""
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
    raise ValueError(f'{key} must be an integer >= {minimum}, got {value!r}.')
  return int(value)


def check_float(key: str, value: Any, minimum: float, maximum: float = math.inf) -> float:
  """``value`` as a finite float in ``[minimum, maximum]``."""
  if (not isinstance(value, numbers.Real) or isinstance(value, bool)
      or not math.isfinite(value) or not minimum <= value <= maximum):
    bound = f'>= {minimum}' if maximum == math.inf else f'in [{minimum}, {maximum}]'
    raise ValueError(f'{key} must be a finite number {bound}, got {value!r}.')
  return float(value)


def check_choice(key: str, value: Any, choices: Sequence[Any]) -> Any:
  """``value``, which must be one of ``choices``."""
  if value not in choices:
    raise ValueError(f'{key} must be one of {list(choices)}, got {value!r}.')
  return value


def check_modalities(key: str, value: Any, valid: Sequence[str] | None = None) -> tuple[str, ...]:
  """A non-empty sequence of distinct modality names, each in ``valid`` when given.

  Without ``valid``, a name must be a Python identifier other than ``fused``: names become model
  head names and metric keys (``accuracy/<head>``), where ``fused`` is the joint head.
  """
  if isinstance(value, str) or not isinstance(value, Sequence) or not value:
    raise ValueError(f'{key} must be a non-empty sequence of modality names, got {value!r}.')
  names = tuple(value)
  if len(set(names)) != len(names):
    raise ValueError(f'{key} must not repeat a modality, got {names}.')
  for name in names:
    if valid is not None and name not in valid:
      raise ValueError(f'{key}: unknown modality {name!r}; valid modalities are {list(valid)}.')
    if valid is None and (not isinstance(name, str) or not name.isidentifier()
                          or name == 'fused'):
      raise ValueError(f'{key}: modality name {name!r} must be a Python identifier other than '
                       f"'fused' (the joint head's name).")
  return names


def per_modality(key: str, value: Any, modalities: Sequence[str],
                 check: Callable[[str, Any], Any]) -> tuple[Any, ...]:
  """One checked value per modality: a scalar applies to all, a sequence gives one each."""
  if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
    return tuple(check(key, value) for _ in modalities)
  if len(value) != len(modalities):
    raise ValueError(f'{key} must be one value or one per modality {tuple(modalities)} '
                     f'({len(modalities)} values), got {len(value)} values: {value!r}.')
  return tuple(check(f'{key}[{i}]', v) for i, v in enumerate(value))
