"""Multi-modal data sets and their batches.

``get_dataset(config.data, seed)`` builds one of

- ``cgmnist``: Colored-and-gray MNIST (:mod:`mmjax.data.cgmnist`), modalities ``gray`` and
  ``color``;
- ``ucimf``: UCI Multiple Features digits (:mod:`mmjax.data.ucimf`), a chosen subset of its six
  feature views;
- ``synthetic``: Gaussian-cluster modalities with per-modality signal, difficulty and a
  train-only shortcut (:mod:`mmjax.data.synthetic`),

as a :class:`MultiModalDataset` of in-memory train/val/test :class:`Split` s. Batches are
``{'inputs': {modality: float32 [B, ...]}, 'label': int32 [B]}``: endless shuffled ones from
:class:`TrainIterator`, ordered padded ones with a mask from :func:`eval_batches`.
:func:`stratified_split` and :meth:`Split.take` carve a held-out slice out of a split.

The data config holds ``name`` and the data set's options, nothing else; an option left out
takes its default (each module's ``OPTIONS``). Data sets are cached in-process, so building the
same one twice is free.
"""

from __future__ import annotations

from typing import Any, Mapping

from mmjax.data import cgmnist, synthetic, ucimf
from mmjax.data.dataset import MultiModalDataset, Split, check_int, stratified_split
from mmjax.data.pipeline import TrainIterator, eval_batches

__all__ = ['MultiModalDataset', 'Split', 'TrainIterator', 'eval_batches', 'get_dataset',
           'stratified_split', 'DATASETS']

DATASETS = {module.NAME: module for module in (cgmnist, ucimf, synthetic)}
"""Data set name -> module with ``OPTIONS`` (defaults) and ``build(seed, **options)``."""


def get_dataset(data_config: Any, seed: int) -> MultiModalDataset:
  """Builds the data set that ``data_config`` describes.

  Args:
    data_config: an ``ml_collections.ConfigDict`` (or a mapping) with ``name``, one of
      ``cgmnist``, ``ucimf``, ``synthetic``, and any of that data set's options.
    seed: seeds the data set's splits and random construction, an integer >= 0.

  Returns:
    The data set; the same object for the same ``(data_config, seed)`` within a process.

  Raises:
    ValueError: for an unknown name, an unknown option or an invalid option value; the message
      names the offending key.
  """
  options = dict(data_config.to_dict() if hasattr(data_config, 'to_dict') else data_config)
  name = options.pop('name', None)
  if name not in DATASETS:
    raise ValueError(f'name={name!r} is not a data set; valid names are {list(DATASETS)}.')
  module = DATASETS[name]
  unknown = sorted(set(options) - set(module.OPTIONS))
  if unknown:
    raise ValueError(f'Unknown option {unknown[0]!r} for data set {name!r}; valid options are '
                     f'name and {list(module.OPTIONS)}.')
  resolved = {key: _hashable(key, options.get(key, default))
              for key, default in module.OPTIONS.items()}
  return module.build(check_int('seed', seed, 0), **resolved)


def _hashable(key: str, value: Any) -> Any:
  """``value`` with lists turned into tuples, so that builds can be cached on it."""
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(key, v) for v in value)
  if isinstance(value, Mapping):
    raise ValueError(f'{key} must be a scalar or a sequence, not a mapping: {value!r}.')
  return value
