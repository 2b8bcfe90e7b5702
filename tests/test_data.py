"""Tests of mmjax.data: the data sets, the stratified splits and the batch pipelines."""

import json
import time

import hypothesis
import hypothesis.strategies as st
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmjax import data
from mmjax.data import cgmnist, ucimf
from mmjax.data.dataset import derive_seed

SMALL_CONFIGS = {
    'cgmnist': {'name': 'cgmnist'},
    'ucimf': {'name': 'ucimf'},
    'synthetic': {'name': 'synthetic', 'num_train': 300, 'num_val': 50, 'num_test': 70},
}


def build(seed=0, **config):
  return data.get_dataset(ml_collections.ConfigDict(config), seed)


def assert_same_dataset(a, b):
  assert a.modalities == b.modalities and a.num_classes == b.num_classes
  for split in data.dataset.SPLITS:
    np.testing.assert_array_equal(a.splits[split].label, b.splits[split].label)
    for m in a.modalities:
      np.testing.assert_array_equal(a.splits[split].inputs[m], b.splits[split].inputs[m])


def nearest_mean_accuracy(train_x, train_y, x, y, num_classes):
  means = np.stack([train_x[train_y == c].mean(axis=0) for c in range(num_classes)])
  predicted = np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)
  return np.mean(predicted == y)


def one_nn_accuracy(train_x, train_y, x, y):
  distances = (x**2).sum(1)[:, None] - 2 * x @ train_x.T + (train_x**2).sum(1)[None]
  return np.mean(train_y[np.argmin(distances, axis=1)] == y)


def counting_split(num_examples, num_classes=3):
  """A split whose example i has features [i, -i] and label i % num_classes."""
  x = np.arange(num_examples, dtype=np.float32)
  return data.Split({'x': np.stack([x, -x], axis=1), 'y': x[:, None]},
                    np.arange(num_examples) % num_classes)


# ----------------------------------------------------------------------------- data sets


@pytest.mark.parametrize('name', list(SMALL_CONFIGS))
def test_dataset_shapes_dtypes_and_labels(name):
  ds = build(**SMALL_CONFIGS[name])
  assert ds.name == name
  assert tuple(ds.splits) == ('train', 'val', 'test')
  for split in ds.splits.values():
    assert split.label.dtype == np.int32 and split.label.shape == (len(split),)
    assert 0 <= split.label.min() and split.label.max() < ds.num_classes
    assert tuple(split.inputs) == ds.modalities
    for m, x in split.inputs.items():
      assert x.dtype == np.float32
      assert x.shape == (len(split), *ds.modality_shapes[m])
      assert np.isfinite(x).all()
  assert set(ds.splits['train'].label) == set(range(ds.num_classes))


def test_expected_shapes_and_sizes():
  assert build(name='cgmnist').modality_shapes == {'gray': (28, 28, 1), 'color': (28, 28, 3)}
  assert {k: len(v) for k, v in build(name='cgmnist').splits.items()} == {
      'train': 3600, 'val': 400, 'test': 1000}
  assert build(name='ucimf').modality_shapes == {'fou': (76,), 'pix': (240,)}
  assert {k: len(v) for k, v in build(name='ucimf').splits.items()} == {
      'train': 1440, 'val': 160, 'test': 400}
  assert build(name='synthetic').modality_shapes == {'a': (16,), 'b': (16,)}


@pytest.mark.parametrize('name', list(SMALL_CONFIGS))
def test_dataset_is_deterministic_in_the_seed(name):
  first = build(seed=3, **SMALL_CONFIGS[name])
  assert build(seed=3, **SMALL_CONFIGS[name]) is first  # cached
  data.registered()[name].build.cache_clear()
  assert_same_dataset(build(seed=3, **SMALL_CONFIGS[name]), first)
  other = build(seed=4, **SMALL_CONFIGS[name])
  m = first.modalities[0]
  assert not np.array_equal(other.splits['train'].inputs[m], first.splits['train'].inputs[m])


def test_dataset_arrays_are_read_only_and_take_copies():
  split = build(**SMALL_CONFIGS['synthetic']).splits['train']
  with pytest.raises(ValueError, match='read-only'):
    split.inputs['a'][0, 0] = 1.0
  taken = split.take([5, 2])
  np.testing.assert_array_equal(taken.inputs['a'], split.inputs['a'][[5, 2]])
  np.testing.assert_array_equal(taken.label, split.label[[5, 2]])
  assert len(taken) == 2 and taken.label.dtype == np.int32


def test_split_rejects_inconsistent_arrays():
  with pytest.raises(ValueError, match=r"inputs\['a'\]"):
    data.Split({'a': np.zeros((3, 2))}, np.zeros(4, np.int32))
  with pytest.raises(ValueError, match='label'):
    data.Split({'a': np.zeros((3, 2))}, np.zeros(3, np.float32))


def _two_modality_dataset(changes=None):
  """A 3-class data set of 4 examples per split; ``changes`` maps (split, what) to arrays."""
  changes = changes or {}
  splits = {}
  for name in ('train', 'val', 'test'):
    inputs = {'a': changes.get((name, 'a'), np.zeros((4, 2))),
              'b': changes.get((name, 'b'), np.ones((4, 3)))}
    splits[name] = data.Split(inputs, changes.get((name, 'label'), np.array([0, 1, 2, 0])))
  return data.MultiModalDataset('mine', ('a', 'b'), 3, splits)


@pytest.mark.parametrize('changes, match', [
    ({('val', 'label'): np.array([0, 1, 3, 0])},
     r'The val split has 1 labels outside \[0, 3\), the first 3 at example 2\.'),
    ({('test', 'label'): np.array([-1, 1, 2, -2])},
     r'The test split has 2 labels outside \[0, 3\), the first -1 at example 0\.'),
    ({('train', 'b'): np.array([[0, 0, 0], [0, np.nan, 0], [0, 0, 0], [np.inf, 0, 0]])},
     r"The train split has NaN or infinite 'b' inputs in 2 examples, the first at example 1\."),
    ({('val', 'a'): np.full((4, 2), -np.inf)},
     r"The val split has NaN or infinite 'a' inputs in 4 examples, the first at example 0\."),
    ({('test', 'a'): np.zeros((0, 2)), ('test', 'b'): np.zeros((0, 3)),
      ('test', 'label'): np.zeros(0, np.int32)},
     r'The test split has no examples; every split needs at least one\.'),
])
def test_dataset_checks_its_splits_at_the_door(changes, match):
  _two_modality_dataset()  # the unchanged data set is valid
  with pytest.raises(ValueError, match=match):
    _two_modality_dataset(changes)


def test_split_names_the_modality_whose_rows_do_not_match_the_labels():
  with pytest.raises(ValueError, match=r"inputs\['b'\] has shape \(5, 3\): 5 examples, but label has 4"):
    _two_modality_dataset({("train", "b"): np.ones((5, 3))})


# ----------------------------------------------------------------------------- cgmnist


def mean_stroke_color(split):
  """The RGB colour of each coloured digit: color / gray over the stroke pixels."""
  return split.inputs['color'].sum(axis=(1, 2)) / split.inputs['gray'].sum(axis=(1, 2))


def nearest_class_color(colors):
  distances = ((colors[:, None] - cgmnist.CLASS_COLORS[None]) ** 2).sum(-1)
  return np.argmin(distances, axis=1)


def test_cgmnist_color_predicts_the_label_in_train_and_val_only():
  ds = build(name='cgmnist')
  accuracy = {split: np.mean(nearest_class_color(mean_stroke_color(s)) == s.label)
              for split, s in ds.splits.items()}
  assert accuracy['train'] > 0.7 and accuracy['val'] > 0.7
  assert accuracy['test'] < 0.3


def test_cgmnist_color_is_the_gray_digit_times_one_color():
  train = build(name='cgmnist', color_variance=0.0).splits['train']
  expected = train.inputs['gray'] * cgmnist.CLASS_COLORS[train.label][:, None, None, :]
  np.testing.assert_allclose(train.inputs['color'], expected, atol=1e-6)
  assert 0.0 <= train.inputs['gray'].min() and train.inputs['gray'].max() <= 1.0


def test_cgmnist_max_train_examples_subsamples_train_only():
  full = build(name='cgmnist')
  small = build(name='cgmnist', max_train_examples=500)
  assert len(small.splits['train']) == 500
  assert np.bincount(small.splits['train'].label).tolist() == [50] * 10
  np.testing.assert_array_equal(small.splits['test'].inputs['gray'],
                                full.splits['test'].inputs['gray'])
  assert len(build(name='cgmnist', max_train_examples=10**6).splits['train']) == 3600
  assert_same_dataset(build(name='cgmnist', max_train_examples=0, tfds_data_dir=''), full)


def test_cgmnist_tfds_source_under_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=200, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = build(name='cgmnist', source='tfds', tfds_data_dir=str(tmp_path), val_fraction=0.25)
  assert ds.modality_shapes == {'gray': (28, 28, 1), 'color': (28, 28, 3)}
  assert len(ds.splits['train']) + len(ds.splits['val']) == 200
  assert len(ds.splits['val']) == 50
  assert len(ds.splits['test']) == 200
  for split in ds.splits.values():
    assert 0.0 <= split.inputs['gray'].min() and split.inputs['gray'].max() <= 1.0
    assert 0.0 <= split.inputs['color'].min() and split.inputs['color'].max() <= 1.0
    assert split.label.dtype == np.int32 and split.label.max() < 10
  # The mock's random pixels are no digits, yet train colour still follows the label.
  train = ds.splits['train']
  assert np.mean(nearest_class_color(mean_stroke_color(train)) == train.label) > 0.7


def test_cgmnist_tfds_source_without_prepared_data_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='tfds build mnist --file_format=array_record'):
    build(name='cgmnist', source='tfds', tfds_data_dir=str(tmp_path))


@pytest.mark.parametrize('options, key', [
    ({'color_variance': -0.1}, 'color_variance'),
    ({'val_fraction': 1.5}, 'val_fraction'),
    ({'test_fraction': 0.0}, 'test_fraction'),
    ({'max_train_examples': -1}, 'max_train_examples'),
    ({'max_train_examples': 0.5}, 'max_train_examples'),
    ({'source': 'torchvision'}, 'source'),
    ({'tfds_data_dir': '/tmp'}, 'tfds_data_dir'),
    ({'color_varience': 0.1}, 'color_varience'),
])
def test_cgmnist_bad_options_name_the_key(options, key):
  with pytest.raises(ValueError, match=key):
    build(name='cgmnist', **options)


# ----------------------------------------------------------------------------- ucimf


def test_ucimf_modalities_choose_the_views_in_order():
  ds = build(name='ucimf', modalities=['mor', 'kar', 'fac'])
  assert ds.modalities == ('mor', 'kar', 'fac')
  assert ds.modality_shapes == {'mor': (6,), 'kar': (64,), 'fac': (216,)}
  assert build(name='ucimf', modalities=('fac',)).modalities == ('fac',)


def test_ucimf_views_are_standardised_on_train():
  ds = build(name='ucimf')
  for m in ds.modalities:
    train = ds.splits['train'].inputs[m]
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-3)
  assert abs(ds.splits['test'].inputs['pix'].mean()) < 0.2


def test_ucimf_pix_is_the_stronger_view():
  ds = build(name='ucimf')
  train, test = ds.splits['train'], ds.splits['test']
  accuracy = {m: nearest_mean_accuracy(train.inputs[m], train.label, test.inputs[m], test.label,
                                       10) for m in ds.modalities}
  assert accuracy['pix'] > accuracy['fou'] + 0.05


def test_ucimf_loading_leaves_the_global_numpy_random_state_alone():
  ucimf._load_views.cache_clear()
  np.random.seed(5)
  expected = np.random.rand()
  np.random.seed(5)
  ucimf._load_views()
  assert np.random.rand() == expected


@pytest.mark.parametrize('modalities', [('fou', 'rgb'), (), ('pix', 'pix'), 'pix'])
def test_ucimf_bad_modalities_name_the_key(modalities):
  with pytest.raises(ValueError, match='modalities'):
    build(name='ucimf', modalities=modalities)


def test_ucimf_bad_modality_lists_the_valid_views():
  with pytest.raises(ValueError, match="'rgb'.*'fou', 'fac', 'kar', 'pix', 'zer', 'mor'"):
    build(name='ucimf', modalities=('rgb',))


# ----------------------------------------------------------------------------- synthetic


def synthetic(seed=0, **options):
  return build(seed=seed, name='synthetic', **options)


def test_synthetic_any_number_of_modalities_with_per_modality_options():
  ds = synthetic(modalities=['x', 'y', 'z'], num_classes=3, dim=[2, 5, 7],
                 signal=[0.0, 1.0, 2.0], clusters_per_class=[1, 2, 3], shortcut=[0.0, 0.5, 1.0],
                 num_train=90, num_val=30, num_test=31)
  assert ds.modalities == ('x', 'y', 'z') and ds.num_classes == 3
  assert ds.modality_shapes == {'x': (2,), 'y': (5 + 3,), 'z': (7 + 3,)}
  assert [len(s) for s in ds.splits.values()] == [90, 30, 31]
  assert np.bincount(ds.splits['test'].label).tolist() == [11, 10, 10]


def test_synthetic_signal_controls_information():
  ds = synthetic(signal=[0.0, 4.0], num_train=1000, num_test=1000)
  train, test = ds.splits['train'], ds.splits['test']
  accuracy = {m: nearest_mean_accuracy(train.inputs[m], train.label, test.inputs[m], test.label,
                                       4) for m in ds.modalities}
  assert accuracy['a'] < 0.32
  assert accuracy['b'] > 0.9


def test_synthetic_clusters_per_class_hide_the_classes_from_linear_models():
  ds = synthetic(signal=6.0, clusters_per_class=[1, 3], num_train=1000, num_test=1000)
  train, test = ds.splits['train'], ds.splits['test']
  nearest_mean, one_nn = {}, {}
  for m in ds.modalities:
    args = (train.inputs[m], train.label, test.inputs[m], test.label)
    nearest_mean[m] = nearest_mean_accuracy(*args, num_classes=4)
    one_nn[m] = one_nn_accuracy(*args)
  assert nearest_mean['a'] > 0.9
  assert nearest_mean['b'] < 0.4  # Every class has the same mean: an XOR-like layout.
  assert one_nn['a'] > 0.85 and one_nn['b'] > 0.85


def test_synthetic_shortcut_is_aligned_in_train_only():
  ds = synthetic(shortcut=[0.0, 1.0], num_test=2000)
  assert ds.modality_shapes == {'a': (16,), 'b': (20,)}
  shown = {split: np.argmax(s.inputs['b'][:, 16:], axis=1) for split, s in ds.splits.items()}
  np.testing.assert_array_equal(shown['train'], ds.splits['train'].label)
  assert np.mean(shown['test'] == ds.splits['test'].label) < 0.3
  assert np.mean(shown['val'] == ds.splits['val'].label) < 0.35
  partial = synthetic(shortcut=0.5, num_train=4000).splits['train']
  agreement = np.mean(np.argmax(partial.inputs['a'][:, 16:], axis=1) == partial.label)
  assert 0.55 < agreement < 0.7  # 0.5 aligned plus a quarter of the random half.


def test_synthetic_noise_dims_append_label_independent_features():
  plain = synthetic(num_train=2000)
  noisy = synthetic(noise_dims=[0, 8], num_train=2000)
  assert noisy.modality_shapes == {'a': (16,), 'b': (24,)}
  train = noisy.splits['train']
  np.testing.assert_array_equal(train.inputs['b'][:, :16], plain.splits['train'].inputs['b'])
  extra = train.inputs['b'][:, 16:]
  assert abs(extra.mean()) < 0.05 and abs(extra.std() - 1.0) < 0.05
  class_means = np.stack([extra[train.label == c].mean(0) for c in range(4)])
  assert np.abs(class_means).max() < 0.15  # 3.4 standard errors of a class mean (500 examples)


@pytest.mark.parametrize('options, key', [
    ({'signal': [1.0, 2.0, 3.0]}, 'signal'),
    ({'signal': -1.0}, 'signal'),
    ({'signal': [1.0, float('nan')]}, r'signal\[1\]'),
    ({'shortcut': 1.5}, 'shortcut'),
    ({'clusters_per_class': [1, 0]}, r'clusters_per_class\[1\]'),
    ({'clusters_per_class': 1.5}, 'clusters_per_class'),
    ({'dim': [4]}, 'dim'),
    ({'noise_dims': [0, -1]}, r'noise_dims\[1\]'),
    ({'num_classes': 1}, 'num_classes'),
    ({'num_train': 0}, 'num_train'),
    ({'modalities': ['a', 'fused']}, 'modalities'),
    ({'modalities': ['a', 'a/b']}, 'modalities'),
    ({'modalities': ['a', 'a']}, 'modalities'),
    ({'noise': 1.0}, 'noise'),
    ({'signal': {'a': 1.0}}, 'signal'),
])
def test_synthetic_bad_options_name_the_key(options, key):
  with pytest.raises(ValueError, match=key):
    synthetic(**options)


# ----------------------------------------------------------------------------- get_dataset


def test_unknown_dataset_name_lists_the_valid_names():
  with pytest.raises(ValueError, match=r"name='mnist'.*'cgmnist', 'ucimf', 'synthetic'"):
    build(name='mnist')
  with pytest.raises(ValueError, match='name=None'):
    data.get_dataset({}, 0)


def test_get_dataset_takes_a_plain_mapping_and_rejects_a_bad_seed():
  assert data.get_dataset({'name': 'synthetic'}, 0) is build(name='synthetic')
  with pytest.raises(ValueError, match='seed'):
    build(seed=-1, name='synthetic')


# ----------------------------------------------------------------------------- splits


def test_stratified_split_is_stratified_deterministic_and_sorted():
  labels = np.repeat(np.arange(4), [100, 50, 30, 20])
  keep, heldout = data.stratified_split(labels, 0.2, seed=0)
  assert np.bincount(labels[heldout]).tolist() == [20, 10, 6, 4]
  assert np.all(np.diff(keep) > 0) and np.all(np.diff(heldout) > 0)
  np.testing.assert_array_equal(np.sort(np.concatenate([keep, heldout])), np.arange(200))
  again_keep, again_heldout = data.stratified_split(labels, 0.2, seed=0)
  np.testing.assert_array_equal(keep, again_keep)
  np.testing.assert_array_equal(heldout, again_heldout)
  assert not np.array_equal(heldout, data.stratified_split(labels, 0.2, seed=1)[1])


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=200),
                  fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**32 - 1))
def test_stratified_split_partitions_with_proportional_classes(labels, fraction, seed):
  labels = np.array(labels)
  num_heldout = round(fraction * len(labels))
  hypothesis.assume(0 < num_heldout < len(labels))
  keep, heldout = data.stratified_split(labels, fraction, seed)
  assert len(heldout) == num_heldout
  np.testing.assert_array_equal(np.sort(np.concatenate([keep, heldout])), np.arange(len(labels)))
  for cls in np.unique(labels):
    assert abs(np.sum(labels[heldout] == cls) - fraction * np.sum(labels == cls)) < 1


@pytest.mark.parametrize('fraction', [0.0, 1.0, -0.5, 2, True])
def test_stratified_split_rejects_a_bad_fraction(fraction):
  with pytest.raises(ValueError, match='fraction'):
    data.stratified_split(np.arange(10) % 2, fraction, seed=0)


def test_stratified_split_rejects_an_empty_part():
  with pytest.raises(ValueError, match='empty part'):
    data.stratified_split(np.arange(10) % 2, 0.01, seed=0)


def test_heldout_slice_of_train_for_gradient_blending():
  train = build(**SMALL_CONFIGS['synthetic']).splits['train']
  keep, heldout = data.stratified_split(train.label, 0.1, seed=0)
  fitting, held_out = train.take(keep), train.take(heldout)
  assert len(fitting) + len(held_out) == len(train) and len(held_out) == 30
  assert np.bincount(held_out.label, minlength=4).min() >= 7


# ----------------------------------------------------------------------------- pipelines


def example_ids(batch):
  return batch['inputs']['y'][:, 0].astype(int)


def test_train_iterator_batches_have_the_batch_format():
  split = counting_split(10)
  batch = next(data.TrainIterator(split, batch_size=4, seed=0))
  assert set(batch) == {'inputs', 'label'} and set(batch['inputs']) == {'x', 'y'}
  assert batch['inputs']['x'].shape == (4, 2) and batch['inputs']['x'].dtype == np.float32
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  ids = example_ids(batch)
  np.testing.assert_array_equal(batch['inputs']['x'][:, 1], -ids)
  np.testing.assert_array_equal(batch['label'], ids % 3)


def test_train_iterator_epochs_reshuffle_and_cover_each_example_at_most_once():
  split = counting_split(1003)
  iterator = data.TrainIterator(split, batch_size=100, seed=7)
  assert iterator.steps_per_epoch == 10
  epochs = []
  for epoch in range(3):
    assert iterator.epoch == epoch
    ids = np.concatenate([example_ids(next(iterator)) for _ in range(iterator.steps_per_epoch)])
    assert len(set(ids)) == len(ids) == 1000  # No repeat inside an epoch; 3 dropped.
    epochs.append(ids)
  assert not np.array_equal(epochs[0], epochs[1])
  assert not np.array_equal(epochs[1], epochs[2])
  assert iterator.step == 30


def test_train_iterator_epoch_is_one_numpy_permutation_cut_into_batches():
  """Epoch e reads ``default_rng([derive_seed(seed), e]).permutation(N)`` in order, by hand."""
  split = counting_split(103)
  iterator = data.TrainIterator(split, batch_size=10, seed=5)
  for epoch in range(2):
    order = np.random.default_rng([derive_seed(5), epoch]).permutation(103)
    ids = np.concatenate([example_ids(next(iterator)) for _ in range(10)])
    np.testing.assert_array_equal(ids, order[:100])


def test_train_iterator_is_deterministic_in_the_seed():
  split = counting_split(500)

  def first_ids(seed):
    iterator = data.TrainIterator(split, batch_size=50, seed=seed)
    return np.concatenate([example_ids(next(iterator)) for _ in range(20)])

  np.testing.assert_array_equal(first_ids(1), first_ids(1))
  assert not np.array_equal(first_ids(1), first_ids(2))
  # Seed 1's second epoch is not seed 2's first (epoch e is seeded by (hash of seed, e)).
  assert not np.array_equal(first_ids(1)[500:1000], first_ids(2)[:500])


def test_train_iterator_resumes_from_its_state():
  split = counting_split(370)
  uninterrupted = data.TrainIterator(split, batch_size=50, seed=3)
  expected = [next(uninterrupted) for _ in range(20)]
  interrupted = data.TrainIterator(split, batch_size=50, seed=3)
  for _ in range(9):
    next(interrupted)
  state = json.loads(json.dumps(interrupted.get_state()))
  resumed = data.TrainIterator(split, batch_size=50, seed=3)
  resumed.set_state(state)
  assert resumed.step == 9 and resumed.epoch == 1
  for want in expected[9:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['label'], want['label'])
    for m in ('x', 'y'):
      np.testing.assert_array_equal(got['inputs'][m], want['inputs'][m])


def test_train_iterator_refuses_a_state_from_another_stream():
  state = data.TrainIterator(counting_split(37), batch_size=5, seed=3).get_state()
  with pytest.raises(ValueError, match='batch_size'):
    data.TrainIterator(counting_split(37), batch_size=6, seed=3).set_state(state)
  with pytest.raises(ValueError, match='seed'):
    data.TrainIterator(counting_split(37), batch_size=5, seed=4).set_state(state)
  with pytest.raises(ValueError, match='step'):
    data.TrainIterator(counting_split(37), batch_size=5, seed=3).set_state({**state, 'step': -1})


@pytest.mark.parametrize('batch_size, seed, key', [
    (11, 0, 'batch_size'), (0, 0, 'batch_size'), (-2, 0, 'batch_size'), (2.5, 0, 'batch_size'),
    (2, -1, 'seed'), (2, 1.5, 'seed')])
def test_train_iterator_rejects_bad_arguments(batch_size, seed, key):
  with pytest.raises(ValueError, match=key):
    data.TrainIterator(counting_split(10), batch_size=batch_size, seed=seed)


def test_train_iterator_epoch_of_4000_images_takes_well_under_a_second():
  images = np.random.default_rng(0).random((4000, 28, 28, 3), dtype=np.float32)
  split = data.Split({'color': images, 'gray': images[..., :1]}, np.arange(4000) % 10)
  iterator = data.TrainIterator(split, batch_size=128, seed=0)
  start = time.perf_counter()
  for _ in range(iterator.steps_per_epoch):
    next(iterator)
  assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize('num_examples, batch_size', [(10, 4), (12, 4), (3, 8)])
def test_eval_batches_pad_to_a_fixed_size_and_mask_the_padding(num_examples, batch_size):
  split = counting_split(num_examples)
  pairs = list(data.eval_batches(split, batch_size))
  assert len(pairs) == -(-num_examples // batch_size)
  for batch, mask in pairs:
    assert mask.dtype == bool and mask.shape == (batch_size,)
    assert batch['label'].shape == (batch_size,) and batch['label'].dtype == np.int32
    assert all(x.shape[0] == batch_size for x in batch['inputs'].values())
  real_ids = np.concatenate([example_ids(batch)[mask] for batch, mask in pairs])
  np.testing.assert_array_equal(real_ids, np.arange(num_examples))
  assert sum(mask.sum() for _, mask in pairs) == num_examples


def test_eval_batches_rejects_a_bad_batch_size_at_once():
  with pytest.raises(ValueError, match='batch_size'):
    data.eval_batches(counting_split(4), 0)
