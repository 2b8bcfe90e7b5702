"""A data set from a user's in-memory arrays: :func:`from_arrays`."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mmjax.data.dataset import SPLITS, MultiModalDataset, Split, check_modalities


def _check_splits_mapping(splits: Any) -> None:
  if not isinstance(splits, Mapping) or set(splits) != set(SPLITS):
    got = sorted(splits) if isinstance(splits, Mapping) else type(splits).__name__
    raise ValueError(f'splits must map each of {list(SPLITS)} to its data, got {got}.')


def check_labels(split_name: str, labels: Any) -> np.ndarray:
  """``labels`` as a 1-D integer array; a ``ValueError`` naming the split otherwise."""
  labels = np.asarray(labels)
  if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer)
                              and not np.issubdtype(labels.dtype, np.bool_)):
    raise ValueError(f'The {split_name} split: labels must be a 1-D integer array, got '
                     f'{labels.dtype} of shape {labels.shape}.')
  if labels.size == 0:
    raise ValueError(f'The {split_name} split has no examples; every split needs at least one.')
  if labels.min() < 0:
    raise ValueError(f'The {split_name} split has a negative label {int(labels.min())} at '
                     f'example {int(np.argmin(labels))}; labels are class indices 0, 1, ...')
  return labels


def resolve_num_classes(labels: Mapping[str, np.ndarray], num_classes: Any) -> int:
  """``num_classes``, or ``1 + `` the largest label of any split when it is None; every label
  must lie below it and it must be >= 2."""
  largest = {s: int(y.max()) for s, y in labels.items()}
  if num_classes is None:
    num_classes = 1 + max(largest.values())
  elif (not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool)):
    raise ValueError(f'num_classes must be an integer >= 2 or None (inferred), got '
                     f'{num_classes!r}.')
  if num_classes < 2:
    raise ValueError(f'num_classes={num_classes}: a classifier needs at least 2 classes '
                     f'(labels seen: {sorted(set(largest.values()))}).')
  for split_name, y in labels.items():
    if largest[split_name] >= num_classes:
      raise ValueError(f'The {split_name} split has label {largest[split_name]} at example '
                       f'{int(np.argmax(y))}, outside [0, {num_classes}) (num_classes='
                       f'{num_classes}).')
  return int(num_classes)


def from_arrays(splits: Mapping[str, tuple[Mapping[str, Any], Any]], *, name: str = 'arrays',
                num_classes: int | None = None) -> MultiModalDataset:
  """A data set from in-memory arrays, checked at the door.

  Args:
    splits: ``{'train': (inputs, labels), 'val': ..., 'test': ...}``, where ``inputs`` is
      ``{modality: array [N, ...]}`` (any real numeric dtype; stored as float32) and ``labels``
      an integer array ``[N]`` of class indices. Every split has the same modalities, in the
      same order, and the same per-example shape for each modality.
    name: the data set's name (shown in messages).
    num_classes: the number of classes; by default ``1 +`` the largest label of any split.

  Returns:
    The :class:`MultiModalDataset`, with the modalities in the order of the train split.

  Raises:
    ValueError: naming the split, modality or key, for: a missing or extra split; an empty
      split; a modality name that is not a Python identifier or is ``fused``; modalities that
      differ between splits; inputs that are not real numeric arrays (bool, complex, strings and
      objects are refused) or hold NaN or infinity; a modality whose row count differs from the
      labels'; per-example shapes that differ between splits; labels that are not 1-D integers,
      are negative or reach ``num_classes``.
  """
  _check_splits_mapping(splits)
  checked_inputs, labels = {}, {}
  for split_name in SPLITS:
    pair = splits[split_name]
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], Mapping):
      raise ValueError(f'splits[{split_name!r}] must be a pair (inputs_by_modality, labels), '
                       f'got {type(pair).__name__}.')
    inputs, split_labels = pair
    labels[split_name] = check_labels(split_name, split_labels)
    check_modalities(f'splits[{split_name!r}] modalities', list(inputs))
    checked_inputs[split_name] = {m: _check_input(split_name, m, x) for m, x in inputs.items()}
  modalities = tuple(checked_inputs['train'])
  for split_name in SPLITS:
    if tuple(checked_inputs[split_name]) != modalities:
      raise ValueError(f'The {split_name} split has modalities {tuple(checked_inputs[split_name])};'
                       f' the train split has {modalities}; every split needs the same, in the '
                       'same order.')
  resolved = resolve_num_classes(labels, num_classes)
  built = {s: Split(checked_inputs[s], labels[s]) for s in SPLITS}
  return MultiModalDataset(name, modalities, resolved, built)


def _check_input(split_name: str, modality: str, x: Any) -> np.ndarray:
  array = np.asarray(x)
  kind = array.dtype.kind
  if kind not in 'iuf':
    raise ValueError(f'The {split_name} split: inputs[{modality!r}] has dtype {array.dtype}; '
                     'inputs must be real numbers (integer or float arrays).')
  if array.ndim < 1:
    raise ValueError(f'The {split_name} split: inputs[{modality!r}] is a scalar; it needs one '
                     'row per example.')
  return array
