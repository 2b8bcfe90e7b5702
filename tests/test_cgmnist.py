"""Colored-and-gray MNIST: the palette, the val colouring option (issue 8 items 9-10)."""

import ml_collections
import numpy as np
import pytest

from mmjax import data
from mmjax.data import cgmnist


def build(seed=0, **options):
  return data.get_dataset(ml_collections.ConfigDict({'name': 'cgmnist', **options}), seed)


def stroke_color(split):
  """Each coloured digit's RGB colour: color / gray summed over the stroke pixels."""
  return split.inputs['color'].sum(axis=(1, 2)) / split.inputs['gray'].sum(axis=(1, 2))


def nearest_mean_accuracy(colors, labels, palette):
  distances = ((colors[:, None] - palette[None]) ** 2).sum(-1)
  return np.mean(np.argmin(distances, axis=1) == labels)


def test_palette_is_the_documented_uniform_draw():
  first_bright_seed = next(s for s in range(100)
                           if np.random.default_rng(s).uniform(size=(10, 3)).max(1).min() >= 0.5)
  assert first_bright_seed == 3
  expected = np.round(np.random.default_rng(3).uniform(size=(10, 3)), 3)
  np.testing.assert_allclose(cgmnist.CLASS_COLORS, expected, atol=1e-6)


def test_colour_is_a_strong_but_imperfect_shortcut():
  # Jittered class colours drawn here (not by the data set): the best colour-only classifier,
  # nearest mean, is right far above chance but far from always, unlike a palette whose colours
  # are all five jitter standard deviations apart (0.98 and more).
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 20000)
  colors = np.clip(cgmnist.CLASS_COLORS[labels] + rng.normal(0, np.sqrt(0.02), (20000, 3)), 0, 1)
  assert 0.65 < nearest_mean_accuracy(colors, labels, cgmnist.CLASS_COLORS) < 0.85
  pairwise = np.sqrt(((cgmnist.CLASS_COLORS[:, None] - cgmnist.CLASS_COLORS[None]) ** 2).sum(-1))
  assert np.sort(pairwise[np.triu_indices(10, 1)])[0] == pytest.approx(0.318, abs=1e-3)


def test_train_colours_follow_the_label_and_test_colours_do_not():
  ds = build()
  train, test = ds.splits['train'], ds.splits['test']
  assert 0.65 < nearest_mean_accuracy(stroke_color(train), train.label, cgmnist.CLASS_COLORS) < 0.9
  assert nearest_mean_accuracy(stroke_color(test), test.label, cgmnist.CLASS_COLORS) < 0.2


def test_val_colors_train_colours_val_like_train_and_random_like_test():
  like_train, like_test = build(), build(val_colors='random')
  for ds in (like_train, like_test):
    val = ds.splits['val']
    np.testing.assert_array_equal(val.inputs['gray'], like_train.splits['val'].inputs['gray'])
  val = like_train.splits['val']
  assert nearest_mean_accuracy(stroke_color(val), val.label, cgmnist.CLASS_COLORS) > 0.65
  val = like_test.splits['val']
  assert nearest_mean_accuracy(stroke_color(val), val.label, cgmnist.CLASS_COLORS) < 0.2
  for split in ('train', 'test'):
    np.testing.assert_array_equal(like_test.splits[split].inputs['color'],
                                  like_train.splits[split].inputs['color'])


def test_val_colors_bad_value_names_the_key():
  with pytest.raises(ValueError, match=r"val_colors must be one of \['train', 'random'\]"):
    build(val_colors='test')
