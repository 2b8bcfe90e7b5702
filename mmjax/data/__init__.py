"""Multi-modal data sets and their batches.

``get_dataset(config.data, seed)`` builds a registered data set (:func:`register`,
:func:`registered`) as a :class:`MultiModalDataset` of train/val/test splits. Three come with
mmjax:

- ``cgmnist``: Colored-and-gray MNIST (:mod:`mmjax.data.cgmnist`), modalities ``gray`` and
  ``color``;
- ``ucimf``: UCI Multiple Features digits (:mod:`mmjax.data.ucimf`), a chosen subset of its six
  feature views;
- ``synthetic``: Gaussian-cluster modalities with per-modality signal, difficulty and a
  train-only shortcut (:mod:`mmjax.data.synthetic`).

A user's own data set is built with :func:`from_arrays` (in-memory arrays, :class:`Split` s) or
:func:`from_records` (records read lazily through Grain, with per-modality preprocessing and
train-time augmentation, optionally in worker processes, :class:`RecordSplit` s) inside a builder
registered with :func:`register`; see ``docs/your_data.md``.

Batches are ``{'inputs': {modality: float32 [B, ...]}, 'label': int32 [B]}``: endless shuffled
ones from :class:`TrainIterator`, ordered padded ones with a mask from :func:`eval_batches`, each
host reading only its own rows. :func:`stratified_split` and a split's ``take`` carve a held-out
slice out of a split.

The data config holds ``name``, optionally ``module`` (imported first) and the data set's
options, nothing else; an option left out takes its default. The bundled data sets are cached
in-process, so building the same one twice is free.
"""

from mmjax.data.arrays import from_arrays
from mmjax.data.dataset import MultiModalDataset, Split, stratified_split
from mmjax.data.pipeline import TrainIterator, eval_batches
from mmjax.data.records import RecordSplit, from_records
from mmjax.data.registry import DataSetBuilder, get_dataset, register, registered
# The bundled data sets register themselves on import, in this order.
from mmjax.data import cgmnist, ucimf, synthetic  # noqa: F401  pylint: disable=wrong-import-order
# The data sets read from `mmjax prepare` folders (modelnet40, ...) register with their preparers.
import mmjax.prepare  # noqa: F401,E402  pylint: disable=wrong-import-position

__all__ = ['DataSetBuilder', 'MultiModalDataset', 'RecordSplit', 'Split', 'TrainIterator',
           'eval_batches', 'from_arrays', 'from_records', 'get_dataset', 'register',
           'registered', 'stratified_split']
