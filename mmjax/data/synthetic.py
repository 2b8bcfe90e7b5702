"""Synthetic modalities with controllable information, difficulty and a train-only shortcut.

Every modality is a noisy view of the same label. For a modality with options ``dim``,
``signal``, ``clusters_per_class`` (K) and ``shortcut``:

- Each class owns K cluster centres in ``R^dim``, drawn once per (seed, modality) and shared by
  all splits. An example of class ``y`` picks one of its class's K clusters uniformly and is that
  centre plus standard Gaussian noise ``N(0, I_dim)``.
- ``signal`` (>= 0) sets how informative the modality is: the centres are scaled so that their
  root-mean-square norm is ``signal``, in units of the noise's standard deviation. 0 makes the
  modality pure noise; larger values separate the classes more.
- ``clusters_per_class`` (integer >= 1) sets how hard the modality is to fit. With 1 each class
  is one Gaussian blob and a linear model separates the classes. With K >= 2 the centres of each
  class are shifted to average to zero (an XOR-like layout): every class has the same mean, a
  linear model is at chance, and a network has to carve out K regions per class, which takes more
  capacity and more steps as K grows.
- ``shortcut`` (in [0, 1]) appends ``num_classes`` one-hot channels that show a class: in train,
  a ``shortcut`` fraction of the examples show their own label and the others a class drawn
  uniformly at random; in val and test every example shows a random class. At 1.0 the shortcut
  is perfectly aligned with the label in train and useless elsewhere, so a model that leans on
  it fits train fast and fails at test. With 0 (the default) no channels are added; the
  per-example shape is ``(dim,)``, or ``(dim + num_classes,)`` with a shortcut.
- ``noise_dims`` (integer >= 0) appends that many pure-noise features ``N(0, 1)``, independent
  of the label, after the ``dim`` informative ones: a modality with many irrelevant features,
  which a model can use to memorise the training set. 0 (the default) adds none.

``dim``, ``signal``, ``clusters_per_class``, ``shortcut`` and ``noise_dims`` take one value for
every modality
or a sequence with one value per modality. Labels are class-balanced within each split
(``N % num_classes`` classes get one more) and shuffled. Generation is vectorised numpy and
deterministic in ``(options, seed)``.

A naive joint model falls below its best single modality when a strong but harder modality is
paired with an easy one that carries a shortcut. With ``modalities=('a', 'b')``,
``signal=(3.0, 1.0)``, ``clusters_per_class=(2, 1)``, ``shortcut=(0.0, 1.0)`` and seed 0, an
sklearn MLP (128 hidden units) reaches 0.88 test accuracy on ``a`` alone but 0.63 on both
(train accuracy 1.0 for both); a linear model is at chance on ``a`` alone.
"""

from __future__ import annotations

import functools

import numpy as np

from mmjax.data.dataset import (SPLITS, MultiModalDataset, Split, check_float, check_int,
                                check_modalities, derive_seed, per_modality)
from mmjax.data.registry import register

NAME = 'synthetic'

OPTIONS = {
    'modalities': ('a', 'b'),
    'num_classes': 4,
    'num_train': 2000,
    'num_val': 500,
    'num_test': 500,
    'dim': 16,
    'signal': 2.0,
    'clusters_per_class': 1,
    'shortcut': 0.0,
    'noise_dims': 0,
}
"""Options and their defaults; ``dim`` to ``noise_dims`` also take one value per modality."""

# Random streams of one build, each seeded by derive_seed(seed, stream, ...).
_STREAM_LABELS, _STREAM_CENTRES, _STREAM_EXAMPLES = range(3)


@register(NAME, options=OPTIONS)
@functools.lru_cache(maxsize=8)
def build(seed: int, modalities: tuple[str, ...], num_classes: int, num_train: int,
          num_val: int, num_test: int, dim: int | tuple[int, ...],
          signal: float | tuple[float, ...], clusters_per_class: int | tuple[int, ...],
          shortcut: float | tuple[float, ...], noise_dims: int | tuple[int, ...] = 0
          ) -> MultiModalDataset:
  """Builds the synthetic data set; cached in-process on the (hashable) arguments.

  Args:
    seed: seeds the cluster centres, the labels and the examples.
    modalities: modality names (Python identifiers other than ``fused``).
    num_classes: the number of classes, >= 2.
    num_train: examples in the train split, >= 1.
    num_val: examples in the val split, >= 1.
    num_test: examples in the test split, >= 1.
    dim: feature dimension, >= 1, one for all or a tuple with one per modality.
    signal: root-mean-square norm of the cluster centres, >= 0; one or one per modality.
    clusters_per_class: clusters per class, >= 1; one or one per modality.
    shortcut: strength of the train-only shortcut, in [0, 1]; one or one per modality.
    noise_dims: label-independent ``N(0, 1)`` features appended, >= 0; one or one per modality.

  Returns:
    The data set; modality ``m`` has per-example shape ``(dim_m + noise_dims_m,)``, plus
    ``num_classes`` when its shortcut is positive.
  """
  modalities = check_modalities('modalities', modalities)
  num_classes = check_int('num_classes', num_classes, 2)
  sizes = [check_int(key, value, 1) for key, value in
           (('num_train', num_train), ('num_val', num_val), ('num_test', num_test))]
  dims = per_modality('dim', dim, modalities, lambda k, v: check_int(k, v, 1))
  signals = per_modality('signal', signal, modalities, lambda k, v: check_float(k, v, 0.0))
  clusters = per_modality('clusters_per_class', clusters_per_class, modalities,
                          lambda k, v: check_int(k, v, 1))
  shortcuts = per_modality('shortcut', shortcut, modalities,
                           lambda k, v: check_float(k, v, 0.0, 1.0))
  noise = per_modality('noise_dims', noise_dims, modalities, lambda k, v: check_int(k, v, 0))

  labels = [_balanced_labels(size, num_classes, derive_seed(seed, _STREAM_LABELS, s))
            for s, size in enumerate(sizes)]
  inputs = {split: {} for split in SPLITS}
  for m, modality in enumerate(modalities):
    centres = cluster_centres(num_classes, clusters[m], dims[m], signals[m],
                              np.random.default_rng(derive_seed(seed, _STREAM_CENTRES, m)))
    for s, split in enumerate(SPLITS):
      rng = np.random.default_rng(derive_seed(seed, _STREAM_EXAMPLES, m, s))
      features = sample_features(centres, labels[s], rng)
      if noise[m]:
        features = np.concatenate(
            [features, rng.standard_normal((len(labels[s]), noise[m])).astype(np.float32)], axis=1)
      if shortcuts[m] > 0:
        aligned_share = shortcuts[m] if split == 'train' else 0.0
        features = np.concatenate(
            [features, shortcut_channels(labels[s], num_classes, aligned_share, rng)], axis=1)
      inputs[split][modality] = features
  splits = {split: Split(inputs[split], labels[s]) for s, split in enumerate(SPLITS)}
  return MultiModalDataset(NAME, modalities, num_classes, splits)


def cluster_centres(num_classes: int, clusters_per_class: int, dim: int, signal: float,
                    rng: np.random.Generator) -> np.ndarray:
  """Cluster centres ``[num_classes, clusters_per_class, dim]`` with RMS norm ``signal``.

  With two or more clusters per class, each class's centres average to zero.
  """
  centres = rng.standard_normal((num_classes, clusters_per_class, dim))
  if clusters_per_class > 1:
    centres -= centres.mean(axis=1, keepdims=True)
  rms_norm = np.sqrt(np.mean(np.sum(centres**2, axis=-1)))
  return centres * (signal / rms_norm)


def sample_features(centres: np.ndarray, labels: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
  """One example per label: a uniformly chosen centre of its class plus ``N(0, I)`` noise."""
  _, clusters_per_class, dim = centres.shape
  cluster = rng.integers(0, clusters_per_class, len(labels))
  noise = rng.standard_normal((len(labels), dim))
  return (centres[labels, cluster] + noise).astype(np.float32)


def shortcut_channels(labels: np.ndarray, num_classes: int, aligned_share: float,
                      rng: np.random.Generator) -> np.ndarray:
  """One-hot channels ``[N, num_classes]`` showing the label for ``aligned_share`` of examples.

  The other examples show a class drawn uniformly at random.
  """
  aligned = rng.random(len(labels)) < aligned_share
  shown = np.where(aligned, labels, rng.integers(0, num_classes, len(labels)))
  return np.eye(num_classes, dtype=np.float32)[shown]


def _balanced_labels(size: int, num_classes: int, seed: int) -> np.ndarray:
  """``size`` labels, as equal a count per class as possible, in a seeded random order."""
  return np.random.default_rng(seed).permutation(np.arange(size) % num_classes).astype(np.int32)
