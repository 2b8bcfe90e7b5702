"""A user's own data: ``docs/your_data.md`` end to end, ``from_arrays``, ``from_records``, the
registry, Grain workers and per-host reading."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mmjax import data, metrics, train
from mmjax.data.dataset import derive_seed

from conftest import assert_resume_is_bit_identical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, 'docs', 'your_data.md')

# Small runs: the doc's commands plus these overrides.
FAST = ['--config.progress_bar=False', '--config.eval_batch_size=64', '--config.method.warmup_epochs=1',
        '--config.method.super_epoch=1']


def doc_blocks(kind):
  """``{name: text}`` of the doc's code blocks marked ``<!-- kind: name -->``."""
  with open(DOC, encoding='utf-8') as f:
    text = f.read()
  pattern = rf'<!-- {kind}: (\S+) -->\n```[a-z]*\n(.*?)```'
  return dict(re.findall(pattern, text, flags=re.S))


def write_doc_file(name, folder):
  path = os.path.join(folder, name)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(doc_blocks('file')[name])
  return path


def run_doc_command(name, cwd, *extra, env=None):
  """Runs the doc's command ``name`` (``python`` is this interpreter) in ``cwd``."""
  command = doc_blocks('command')[name].strip()
  argv = [sys.executable if a == 'python' else a for a in shlex.split(command)]
  return subprocess.run([*argv, *extra], cwd=cwd, capture_output=True, text=True, timeout=600,
                        check=False, env={**os.environ, 'PYTHONPATH': ROOT, **(env or {})})


def make_array_folder(folder, sizes=(96, 32, 32), num_classes=3, seed=0):
  """The doc's folder layout: ``<split>_<modality>.npy`` and ``<split>_label.npy``; the image
  carries the class in its mean, the audio in its first features."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for split, n in zip(('train', 'val', 'test'), sizes):
    label = np.arange(n) % num_classes
    image = np.clip(rng.normal(60 + 60 * label[:, None, None], 40, (n, 8, 8)), 0, 255)
    audio = rng.normal(size=(n, 20)) + np.eye(num_classes, 20)[label]
    np.save(os.path.join(folder, f'{split}_image.npy'), image.astype(np.uint8))
    np.save(os.path.join(folder, f'{split}_audio.npy'), audio.astype(np.float64))
    np.save(os.path.join(folder, f'{split}_label.npy'), label.astype(np.int64))


def records(workdir):
  return metrics.without_timing(metrics.read_metrics(workdir))


def load_doc_config(name, where, arg, **data_options):
  """The doc's config file ``name``, imported as ``python -m mmjax.main`` imports it (which
  registers its data set in this process), with ``get_config(arg)`` and data options set."""
  from mmjax import main  # pylint: disable=import-outside-toplevel
  return main.parse_flags([f'--config={write_doc_file(name, where)}:{arg}', '--workdir=unused',
                           *[f'--config.data.{k}={v}' for k, v in data_options.items()]]).config


# ----------------------------------------------------------------------------- the doc, end to end
def test_doc_arrays_gblend_run_resumes_after_a_crash_as_if_uninterrupted(tmp_path, monkeypatch):
  """The doc's array config through the real CLI with G-Blend: a run killed after its first
  epoch's checkpoint and resumed by the same command (a new process that must find the
  registration again) ends exactly as an uninterrupted run (here in-process)."""
  make_array_folder(tmp_path / 'my_data')
  monkeypatch.chdir(tmp_path)  # the doc's relative data.folder
  config = load_doc_config('my_arrays_config.py', tmp_path, 'method=gblend', folder='my_data')
  config.unlock()
  config.update_from_flattened_dict({'progress_bar': False, 'eval_batch_size': 64,
                                     'method.warmup_epochs': 1, 'method.super_epoch': 1,
                                     'num_epochs': 2})
  train.train_and_evaluate(config, str(tmp_path / 'runs/full'))
  args = [*FAST, '--config.num_epochs=2']
  crashed = run_doc_command('gblend', tmp_path, *args, env={'MMJAX_FAULT': 'epoch_end:1'})
  assert crashed.returncode == 137, crashed.stderr[-3000:]
  assert max(r['epoch'] for r in metrics.read_metrics(tmp_path / 'runs/gblend')) == 1
  resumed = run_doc_command('gblend', tmp_path, *args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert records(tmp_path / 'runs/gblend') == records(tmp_path / 'runs/full')
  assert any('gblend/weight/image' in r for r in records(tmp_path / 'runs/full'))
  with open(tmp_path / 'runs/gblend/config.json', encoding='utf-8') as f:
    assert json.load(f)['data'] == {'name': 'my_arrays', 'folder': 'my_data'}


def test_doc_arrays_greedy_run(tmp_path):
  write_doc_file('my_arrays_config.py', tmp_path)
  make_array_folder(tmp_path / 'my_data')
  done = run_doc_command('greedy', tmp_path, *FAST[:2], '--config.num_epochs=1')
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'runs/greedy/config.json', encoding='utf-8') as f:
    assert json.load(f)['model']['name'] == 'mmtm'
  test = [r for r in records(tmp_path / 'runs/greedy') if r['split'] == 'test']
  assert {'accuracy/fused', 'accuracy/image', 'accuracy/audio'} <= set(test[-1])
  assert any(k.startswith('greedy/') for r in records(tmp_path / 'runs/greedy') for k in r)


def test_doc_arrays_bad_label_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
  from mmjax import main  # pylint: disable=import-outside-toplevel
  config_file = write_doc_file('my_arrays_config.py', tmp_path)
  make_array_folder(tmp_path / 'my_data')
  label = np.load(tmp_path / 'my_data/val_label.npy')
  label[3] = -1
  np.save(tmp_path / 'my_data/val_label.npy', label)
  monkeypatch.chdir(tmp_path)
  assert main.main([f'--config={config_file}:method=gblend', '--config.data.folder=my_data',
                    '--workdir=runs/gblend']) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      'mmjax: error: The val split has a negative label -1 at example 3; labels are class '
      'indices 0, 1, ...')
  assert not os.path.exists(tmp_path / 'runs')


class TwoViews(tfds.core.GeneratorBasedBuilder):
  """A tiny TFDS data set with two views (float and uint8) and a label, made by the test."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'left_view': tfds.features.Tensor(shape=(6,), dtype=np.uint8),
        'right_view': tfds.features.Tensor(shape=(2, 3), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(120, 0), 'test': self._generate_examples(30, 1)}

  def _generate_examples(self, num_examples, seed):  # pylint: disable=arguments-differ
    rng = np.random.default_rng(seed)
    for i in range(num_examples):
      label = i % 3
      yield i, {'left_view': rng.integers(0, 80, 6).astype(np.uint8) + 80 * label,
                'right_view': rng.integers(0, 256, (2, 3)).astype(np.uint8),
                'label': label}


def make_tfds(data_dir):
  TwoViews(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


def test_doc_tfds_gblend_run(tmp_path):
  """The doc's TFDS config through the real CLI: a TFDS data set the test prepared, read as a
  data source by a process that does not know its builder, with the config file's preprocess
  and augment functions."""
  make_tfds(tmp_path / 'tfds_data')
  write_doc_file('my_tfds_config.py', tmp_path)
  done = run_doc_command('tfds', tmp_path, *FAST, '--config.num_epochs=1')
  assert done.returncode == 0, done.stderr[-3000:]
  test = [r for r in records(tmp_path / 'runs/tfds_gblend') if r['split'] == 'test']
  assert {'accuracy/fused', 'accuracy/left', 'accuracy/right'} <= set(test[-1])


def test_two_grain_workers_continue_the_same_stream_and_evaluate_alike(tmp_path):
  """The doc's TFDS data set (its config file's preprocess and augment functions, sent by value
  to two Grain worker processes): an iterator resumed mid-stream in workers continues the
  in-process stream exactly (augmentation included), and evaluation batches are the same."""
  make_tfds(tmp_path / 'tfds_data')
  config = load_doc_config('my_tfds_config.py', tmp_path, 'method=vanilla',
                           data_dir=tmp_path / 'tfds_data')
  dataset = data.get_dataset(config.data, seed=0)
  train_split = dataset.splits['train']
  assert train_split.worker_count == 0 and len(train_split) == 108
  in_process = data.TrainIterator(train_split, 16, seed=5)
  expected = [next(in_process) for _ in range(9)]  # 6 batches per epoch: into the second epoch
  stopped = data.TrainIterator(train_split, 16, seed=5)
  for _ in range(4):
    next(stopped)
  resumed = data.TrainIterator(train_split, 16, seed=5, worker_count=2)
  resumed.set_state(stopped.get_state())
  for batch in expected[4:]:
    assert_same_batch(next(resumed), batch)
  resumed.close()
  evaluated = list(data.eval_batches(dataset.splits['test'], 8, worker_count=2))
  for (batch, mask), (want, want_mask) in zip(evaluated,
                                              data.eval_batches(dataset.splits['test'], 8)):
    assert_same_batch(batch, want)
    np.testing.assert_array_equal(mask, want_mask)
  assert len(evaluated) == 4 and evaluated[-1][1].sum() == 30 - 24


def assert_same_batch(batch, expected):
  assert batch['inputs'].keys() == expected['inputs'].keys()
  for m in batch['inputs']:
    np.testing.assert_array_equal(batch['inputs'][m], expected['inputs'][m])
  np.testing.assert_array_equal(batch['label'], expected['label'])


# ----------------------------------------------------------------------------- from_arrays
def arrays(n=(6, 3, 4), label_offset=0):
  return {s: ({'a': np.arange(k * 2).reshape(k, 2).astype(np.uint8),
               'b': np.full((k, 3, 1), 0.5)},
              (np.arange(k) + label_offset) % 3)
          for s, k in zip(('train', 'val', 'test'), n)}


def test_from_arrays_builds_float32_splits_and_infers_num_classes():
  dataset = data.from_arrays(arrays(), name='mine')
  assert (dataset.name, dataset.modalities, dataset.num_classes) == ('mine', ('a', 'b'), 3)
  assert dataset.modality_shapes == {'a': (2,), 'b': (3, 1)}
  train_split = dataset.splits['train']
  assert train_split.inputs['a'].dtype == np.float32
  np.testing.assert_array_equal(train_split.inputs['a'][2], [4.0, 5.0])
  np.testing.assert_array_equal(train_split.label, [0, 1, 2, 0, 1, 2])
  assert data.from_arrays(arrays(), num_classes=5).num_classes == 5


@pytest.mark.parametrize('mutate, message', [
    (lambda s: s.pop('test'), r"splits must map each of \['train', 'val', 'test'\]"),
    (lambda s: s.update(val=({'a': np.zeros((0, 2)), 'b': np.zeros((0, 3, 1))}, np.zeros(0, int))),
     'The val split has no examples'),
    (lambda s: s.update(test=({'b': s['test'][0]['b'], 'a': s['test'][0]['a']}, s['test'][1])),
     r"The test split has modalities \('b', 'a'\); the train split has \('a', 'b'\)"),
    (lambda s: s['val'][0].pop('b'), r"The val split has modalities \('a',\)"),
    (lambda s: s['train'][0].update(fused=np.zeros((6, 1))), "modality name 'fused'"),
    (lambda s: s['train'][0].update({'my image': np.zeros((6, 1))}), "modality name 'my image'"),
    (lambda s: s['val'][0].update(a=np.zeros((3, 4))),
     r"The val split has 'a' examples of shape \(4,\), but the train split has \(2,\)"),
    (lambda s: s['test'][0].update(b=np.array([['x']] * 4)),
     r"The test split: inputs\['b'\] has dtype <U1; inputs must be real numbers"),
    (lambda s: s['test'][0].update(b=np.ones((4, 3, 1), bool)), r"inputs\['b'\] has dtype bool"),
    (lambda s: s['train'][0]['b'].__setitem__((4, 1, 0), np.inf),
     "The train split has NaN or infinite 'b' inputs in 1 examples, the first at example 4"),
    (lambda s: s['val'][0].update(a=np.zeros((2, 2))),
     r"inputs\['a'\] has shape \(2, 2\): 2 examples, but label has 3"),
    (lambda s: s.update(val=(s['val'][0], np.array([0.0, 1.0, 2.0]))),
     'The val split: labels must be a 1-D integer array, got float64'),
    (lambda s: s.update(val=(s['val'][0], np.array([0, -2, 1]))),
     'The val split has a negative label -2 at example 1'),
], ids=['missing split', 'empty split', 'modality order', 'missing modality', 'fused',
        'not an identifier', 'shape across splits', 'strings', 'bool', 'infinite', 'row count',
        'float labels', 'negative label'])
def test_from_arrays_refuses_bad_data_naming_split_and_modality(mutate, message):
  splits = arrays()
  mutate(splits)
  with pytest.raises(ValueError, match=message):
    data.from_arrays(splits)


def test_from_arrays_checks_labels_against_a_given_num_classes():
  with pytest.raises(ValueError, match=r'The train split has label 2 at example 2, outside \[0, 2\)'):
    data.from_arrays(arrays(), num_classes=2)
  with pytest.raises(ValueError, match='at least 2 classes'):
    data.from_arrays({s: (x, np.zeros_like(y)) for s, (x, y) in arrays().items()})


# ----------------------------------------------------------------------------- from_records
def list_records(n, seed, num_classes=3):
  """A list-of-dicts record source: ``img`` uint8 [4], ``vec`` float [3], ``y`` the label."""
  rng = np.random.default_rng(seed)
  return [{'img': rng.integers(0, 256, 4).astype(np.uint8), 'vec': rng.normal(size=3),
           'y': i % num_classes} for i in range(n)]


def halve(x):
  return x / 2.0


def add_noise(x, rng):
  return x + rng.standard_normal(x.shape)


def record_dataset(sizes=(40, 12, 10), **kwargs):
  sources = {s: list_records(n, i) for i, (s, n) in enumerate(zip(('train', 'val', 'test'), sizes))}
  return sources, data.from_records(sources, {'image': 'img', 'vector': 'vec'}, 'y', **kwargs)


def test_from_records_reads_labels_once_and_preprocesses_each_example():
  sources, dataset = record_dataset(preprocess={'image': halve})
  assert (dataset.modalities, dataset.num_classes) == (('image', 'vector'), 3)
  assert dataset.modality_shapes == {'image': (4,), 'vector': (3,)}
  val = dataset.splits['val']
  np.testing.assert_array_equal(val.label, np.arange(12) % 3)
  batch = val.batch(np.array([5, 2]))
  np.testing.assert_array_equal(batch['inputs']['image'],
                                np.stack([sources['val'][5]['img'], sources['val'][2]['img']]) / 2)
  np.testing.assert_array_equal(batch['inputs']['vector'][1], sources['val'][2]['vec'].astype(np.float32))
  assert batch['inputs']['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['label'], [2, 2])
  taken = val.take([7, 1, 4]).take([2, 0])
  np.testing.assert_array_equal(taken.label, [1, 1])
  np.testing.assert_array_equal(taken.batch(np.array([0]))['inputs']['vector'][0],
                                sources['val'][4]['vec'].astype(np.float32))


def test_from_records_takes_given_labels_without_reading_them():
  class NoLabels(list):
    def __getitem__(self, i):
      record = dict(super().__getitem__(i))
      record.pop('y')
      return record
  sources = {s: NoLabels(list_records(n, 0)) for s, n in (('train', 9), ('val', 3), ('test', 3))}
  labels = {s: np.arange(len(src)) % 2 for s, src in sources.items()}
  dataset = data.from_records(sources, {'image': 'img'}, 'y', labels=labels)
  assert dataset.num_classes == 2
  np.testing.assert_array_equal(dataset.splits['train'].batch(np.array([3]))['label'], [1])


@pytest.mark.parametrize('change, message', [
    (dict(features={'image': 'pixels'}),
     r"The train split: record 0 has no key 'pixels'; its keys are \['img', 'vec', 'y'\]"),
    (dict(label_key='target'), "The train split: record 0 has no key 'target'"),
    (dict(preprocess={'audio': halve}), r"preprocess\['audio'\]: not a modality"),
    (dict(val=[{'img': np.zeros(5, np.uint8), 'vec': np.zeros(3), 'y': 0}]),
     r"The val split has 'image' examples of shape \(5,\), but the train split has \(4,\)"),
    (dict(test=[{'img': np.array(['a'] * 4), 'vec': np.zeros(3), 'y': 0}]),
     r"The test split: record 0 gives 'image' \(key 'img'\) of dtype <U1"),
    (dict(test=[{'img': np.zeros(4), 'vec': np.array([0, np.nan, 0]), 'y': 0}]),
     r"The test split: record 0 gives NaN or infinite 'vector' inputs \(key 'vec'\)"),
    (dict(test=[]), 'The test split has no examples'),
    (dict(test=[np.zeros(3)]), 'The test split: record 0 is a ndarray, not a mapping'),
    (dict(val=[{'img': np.zeros(4), 'vec': np.zeros(3), 'y': 1.5}]),
     'The val split: labels must be a 1-D integer array, got float64'),
    (dict(num_classes=2), r'The train split has label 2 at example 2, outside \[0, 2\)'),
])
def test_from_records_refuses_bad_records_naming_split_and_key(change, message):
  sources = {'train': list_records(6, 0), 'val': list_records(3, 1), 'test': list_records(3, 2)}
  for split in ('val', 'test'):
    if split in change:
      sources[split] = change.pop(split)
  kwargs = {'features': {'image': 'img', 'vector': 'vec'}, 'label_key': 'y', **change}
  with pytest.raises(ValueError, match=message):
    data.from_records(sources, **kwargs)


def test_a_bad_record_met_later_names_its_split_and_record():
  sources, dataset = record_dataset()
  sources['train'][17]['img'] = np.zeros(9, np.uint8)
  with pytest.raises(ValueError, match=r"The train split: record 17 gives 'image' of shape \(9,\)"):
    dataset.splits['train'].batch(np.array([3, 17]))


def test_augment_is_per_example_seeded_train_only_and_differs_between_epochs():
  """``augment(x, rng)`` with ``rng`` seeded by (the iterator's seed, batch index, row): the
  same stream twice, another draw for the same example in another epoch, none in evaluation."""
  _, dataset = record_dataset(augment={'vector': add_noise})
  _, plain = record_dataset()
  split, plain_split = dataset.splits['train'], plain.splits['train']
  first = [next(data.TrainIterator(split, 8, seed=1)) for _ in range(2)]
  stream, plain_stream = data.TrainIterator(split, 8, seed=1), data.TrainIterator(plain_split, 8, 1)
  batches = [next(stream) for _ in range(10)]  # 5 batches per epoch: two epochs
  plain_batches = [next(plain_stream) for _ in range(10)]
  assert_same_batch(first[0], batches[0])
  noise = {}
  for k, (batch, plain_batch) in enumerate(zip(batches, plain_batches)):
    np.testing.assert_array_equal(batch['inputs']['image'], plain_batch['inputs']['image'])
    np.testing.assert_array_equal(batch['label'], plain_batch['label'])
    delta = batch['inputs']['vector'] - plain_batch['inputs']['vector']
    assert np.all(np.abs(delta) > 0)
    for row in range(8):  # which example is at a row: its unaugmented vector identifies it
      noise.setdefault(plain_batch['inputs']['vector'][row].tobytes(), []).append(delta[row])
    expected_row0 = np.random.default_rng([derive_seed(1), k, 0]).standard_normal(3)
    np.testing.assert_allclose(delta[0], expected_row0.astype(np.float32), atol=1e-5)
  twice = [v for v in noise.values() if len(v) == 2]
  assert twice and all(not np.allclose(a, b) for a, b in twice)
  eval_batch, _ = next(data.eval_batches(split, 8))
  np.testing.assert_array_equal(eval_batch['inputs']['vector'],
                                next(data.eval_batches(plain_split, 8))[0]['inputs']['vector'])


# ----------------------------------------------------------------------------- per-host reading
@pytest.mark.parametrize('records_backed', [False, True])
def test_each_host_reads_its_own_rows_of_every_global_batch(records_backed):
  """Two (simulated) hosts each read half of every global batch, rows [0, 4) and [4, 8):
  together exactly the one-host batch, augmentation included; the same for evaluation."""
  if records_backed:
    split = record_dataset(augment={'vector': add_noise})[1].splits['train']
  else:
    split = data.from_arrays(arrays(n=(40, 3, 3))).splits['train']
  whole = data.TrainIterator(split, 8, seed=3, process_index=0, process_count=1)
  hosts = [data.TrainIterator(split, 8, seed=3, process_index=p, process_count=2) for p in (0, 1)]
  for _ in range(7):
    expected = next(whole)
    halves = [next(h) for h in hosts]
    assert len(halves[0]['label']) == 4
    for m in expected['inputs']:
      np.testing.assert_array_equal(
          np.concatenate([h['inputs'][m] for h in halves]), expected['inputs'][m])
    np.testing.assert_array_equal(np.concatenate([h['label'] for h in halves]), expected['label'])
  one = list(data.eval_batches(split, 16, process_index=0, process_count=1))
  two = [list(data.eval_batches(split, 16, process_index=p, process_count=2)) for p in (0, 1)]
  assert len(one) == len(two[0]) == len(two[1]) == 3
  for (batch, mask), (b0, m0), (b1, m1) in zip(one, *two):
    np.testing.assert_array_equal(np.concatenate([m0, m1]), mask)
    np.testing.assert_array_equal(np.concatenate([b0['label'], b1['label']]), batch['label'])
  assert sum(m.sum() for _, m in one) == 40


def test_host_reading_refuses_a_batch_that_does_not_split_over_the_hosts():
  split = data.from_arrays(arrays(n=(40, 3, 3))).splits['train']
  with pytest.raises(ValueError, match='batch_size=6 must be divisible by the 4 processes'):
    data.TrainIterator(split, 6, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match='process_index=2 must be below process_count=2'):
    list(data.eval_batches(split, 8, process_index=2, process_count=2))


# ----------------------------------------------------------------------------- registry
@data.register('test_user_records', options={'num_train': 64, 'with_augment': False})
def build_test_records(seed, num_train, with_augment):
  """Record splits over lists of dicts (for the trainer tests)."""
  rng = np.random.default_rng(seed)

  def source(n):
    label = np.arange(n) % 3
    return [{'img': (rng.normal(size=4) + 2 * y).astype(np.float32),
             'vec': rng.normal(size=3) - y, 'y': int(y)} for y in label]

  return data.from_records({'train': source(num_train), 'val': source(24), 'test': source(24)},
                           {'image': 'img', 'vector': 'vec'}, 'y', name='test_user_records',
                           augment={'vector': add_noise} if with_augment else None)


def record_config(tiny_config, method, **method_options):
  """A tiny run of ``method`` on the registered record data set (augmented)."""
  config = tiny_config(method, **method_options)
  config.data = {'name': 'test_user_records', 'with_augment': True}
  config.model.encoders = {m: {'name': 'mlp', 'hidden': (16, 16), 'features': 8, 'dropout': 0.0}
                           for m in ('image', 'vector')}
  config.batch_size = 16
  config.eval_batch_size = 16
  return config


def test_gblend_on_record_splits_resumes_bit_identically(tiny_config, tmp_path):
  """G-Blend's held-out slice (``stratified_split`` on the records' labels, ``take``) and its
  held-out batch stream run on augmented record splits; a run stopped after epoch 1 and resumed
  equals an uninterrupted one."""
  config = record_config(tiny_config, 'gblend', estimator='gradient')
  config.method.update({'every_steps': 2})
  config.num_epochs = 2
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  assert any('gblend/weight/vector' in r for r in metrics.read_metrics(full))


def test_greedy_on_record_splits(tiny_config, tmp_path):
  """Greedy's passes over the train split (utilisation rates) read record splits too."""
  config = record_config(tiny_config, 'greedy', mode='guided')
  config.num_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert set(summary['test_at_best']) == {'fused', 'image', 'vector'}
  assert any('greedy/u/image' in r for r in metrics.read_metrics(str(tmp_path)))


def test_register_lists_options_and_refuses_bad_names_and_clashes():
  assert list(data.registered())[:3] == ['cgmnist', 'ucimf', 'synthetic']
  entry = data.registered()['test_user_records']
  assert entry.options == {'num_train': 64, 'with_augment': False}
  assert entry.description == 'Record splits over lists of dicts (for the trainer tests).'
  assert data.registered()['synthetic'].options['num_classes'] == 4
  for bad in ('my data', 'module', 3):
    with pytest.raises(ValueError, match='must be a Python identifier'):
      data.register(bad)
  with pytest.raises(ValueError, match="data set 'synthetic' is already registered by "
                                       'mmjax.data.synthetic.build'):
    data.register('synthetic')(build_test_records)
  with pytest.raises(ValueError, match="'name' and 'module' are keys of config.data"):
    data.register('with_module_option', options={'module': 'x'})(build_test_records)
  assert data.register('test_user_records', options=entry.options)(build_test_records) \
      is build_test_records  # the same builder again: a config file imported twice


def test_get_dataset_fills_defaults_and_names_unknown_keys():
  dataset = data.get_dataset({'name': 'test_user_records', 'num_train': 30}, seed=0)
  assert len(dataset.splits['train']) == 30
  with pytest.raises(ValueError, match=r"Unknown option data.num_val for data set "
                                       r"'test_user_records'; valid options are name, module and "
                                       r"\['num_train', 'with_augment'\]"):
    data.get_dataset({'name': 'test_user_records', 'num_val': 3}, seed=0)
  with pytest.raises(ValueError, match=r"data.name='nope' is not a data set; valid names are "
                                       r"\['cgmnist', 'ucimf', 'synthetic', "):
    data.get_dataset({'name': 'nope'}, seed=0)


def test_data_module_is_imported_by_name_before_the_lookup(tmp_path, monkeypatch):
  """``data.module`` names a module of the user's package where the data set registers; the
  registration happens on import (what a second, resuming process relies on)."""
  package = tmp_path / 'my_package'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'my_data.py').write_text(
      'import numpy as np\n'
      'import mmjax.data\n\n'
      "@mmjax.data.register('from_my_package', options={'size': 4})\n"
      'def build(seed, size):\n'
      '  split = ({"x": np.arange(2 * size).reshape(size, 2)}, np.arange(size) % 2)\n'
      "  return mmjax.data.from_arrays({'train': split, 'val': split, 'test': split})\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert 'from_my_package' not in data.registered()
  dataset = data.get_dataset({'name': 'from_my_package', 'module': 'my_package.my_data',
                              'size': 6}, seed=0)
  assert len(dataset.splits['train']) == 6 and dataset.modalities == ('x',)
  with pytest.raises(ValueError, match=r"data.module='my_package.missing' cannot be imported: "
                                       r"No module named 'my_package.missing'"):
    data.get_dataset({'name': 'from_my_package', 'module': 'my_package.missing'}, seed=0)


def test_a_builder_must_return_a_dataset():
  data.register('returns_arrays_not_a_dataset')(lambda seed: arrays())
  with pytest.raises(ValueError, match="returned a dict, not a MultiModalDataset"):
    data.get_dataset({'name': 'returns_arrays_not_a_dataset'}, seed=0)
