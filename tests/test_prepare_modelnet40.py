"""ModelNet40 multi-view from tiny PNG renders in the MVCNN layout: ``mmjax prepare modelnet40``,
Wu et al.'s preprocessing and val split, and smoke runs (late fusion and MMTM) through the CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax import cli, data, metrics
from mmjax.errors import UserError
from mmjax.prepare import modelnet40

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 8
TRAIN_MODELS, TEST_MODELS = 2, 1
CORRUPT = os.path.join('bed', 'train', 'bed_0002.obj.shaded_v007.png')
MISSING = os.path.join('chair', 'test', 'chair_0003.obj.shaded_v001.png')


def render(label, model, view):
  """A tiny RGB render: a class colour, a model- and view-dependent gradient."""
  y, x = np.mgrid[:SIZE, :SIZE]
  image = np.stack([(6 * label + x * (view + 1)) % 256, (50 + 3 * model + y) % 256,
                    (x * y + 7 * label) % 256], axis=-1)
  return image.astype(np.uint8)


def write_renders(root):
  """Every class with 2 train and 1 test model of 12 views each; one view file corrupt and one
  missing. Returns ``{key: {view: image}}``."""
  written = {}
  for label, name in enumerate(modelnet40.CLASSES):
    for split, models in (('train', range(1, TRAIN_MODELS + 1)),
                          ('test', range(TRAIN_MODELS + 1, TRAIN_MODELS + TEST_MODELS + 1))):
      folder = os.path.join(root, name, split)
      os.makedirs(folder)
      for model in models:
        stem = f'{name}_{model:04d}'
        for view in range(12):
          image = render(label, model, view)
          Image.fromarray(image).save(os.path.join(folder, f'{stem}.obj.shaded_v{view + 1:03d}.png'))
          written.setdefault(f'{split}/{stem}', {})[view] = image
  with open(os.path.join(root, CORRUPT), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n this is not a PNG')
  os.remove(os.path.join(root, MISSING))
  return written


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('modelnet40')
  raw, out = str(root / 'raw'), str(root / 'records')
  written = write_renders(raw)
  assert cli.main(['prepare', 'modelnet40', '--raw', raw, '--out', out, '--workers', '0']) == 0
  return raw, out, written


def test_prepare_keeps_views_0_and_6_and_reports_bad_files(prepared):
  raw, out, written = prepared
  metadata = json.load(open(os.path.join(out, 'metadata.json')))
  assert metadata['counts'] == {'train': 79, 'test': 39}
  assert metadata['classes'][:3] == ['airplane', 'bathtub', 'bed'] and len(metadata['classes']) == 40
  assert metadata['features'] == {'view_0': {'dtype': 'uint8', 'shape': [SIZE, SIZE, 3]},
                                  'view_6': {'dtype': 'uint8', 'shape': [SIZE, SIZE, 3]}}
  failures = {f['key']: f for f in json.load(open(os.path.join(out, 'failures.json')))['failures']}
  assert sorted(failures) == ['test/chair_0003', 'train/bed_0002']
  assert failures['train/bed_0002']['files'][1] == os.path.join(raw, CORRUPT)
  assert 'UnidentifiedImageError' in failures['train/bed_0002']['error']
  assert 'view 0 of this model is missing' in failures['test/chair_0003']['error']
  from mmjax import prepare  # pylint: disable=import-outside-toplevel
  records = prepare.open_prepared(out, 'modelnet40')
  first, last = records['train'][0], records['test'][len(records['test']) - 1]
  assert first['key'] == 'train/airplane_0001' and first['label'] == 0
  np.testing.assert_array_equal(first['view_0'], written['train/airplane_0001'][0])
  np.testing.assert_array_equal(first['view_6'], written['train/airplane_0001'][6])
  assert last['key'] == 'test/xbox_0003' and last['label'] == 39


def test_the_data_set_normalises_flips_and_carves_wu_et_al_val(prepared):
  _, out, written = prepared
  dataset = data.get_dataset({'name': 'modelnet40', 'path': out}, seed=3)
  assert dataset.modalities == ('view_a', 'view_b') and dataset.num_classes == 40
  # Wu et al.: random.Random(10) shuffles the 79 train indices; the first floor(0.2 * 79) = 15
  # are val. Here: the shuffle of range(79) with Python's Mersenne Twister, written out.
  assert len(dataset.splits['val']) == 15 and len(dataset.splits['train']) == 64
  np.testing.assert_array_equal(np.sort(np.concatenate(
      [dataset.splits['train'].indices, dataset.splits['val'].indices])), np.arange(79))
  np.testing.assert_array_equal(dataset.splits['val'].indices[:5], [52, 74, 50, 49, 37])
  # Evaluation batches: (x / 255 - ImageNet mean) / ImageNet std, computed here by hand.
  test = dataset.splits['test']
  batch = test.batch(np.array([0]))
  pixel = written['test/airplane_0003'][6][2, 5]  # view 6 is view_b
  expected = (pixel / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(batch['inputs']['view_b'][0, 2, 5], expected, rtol=1e-6)
  # Training batches flip each view left-right with probability 1/2, each view on its own draw.
  train = dataset.splits['train']
  rngs = [np.random.default_rng(i) for i in range(64)]
  flipped = train.batch(np.arange(64), rngs)['inputs']
  plain = train.batch(np.arange(64))['inputs']
  mirrored = {m: [bool(np.array_equal(flipped[m][i], plain[m][i, :, ::-1])) for i in range(64)]
              for m in ('view_a', 'view_b')}
  for m in mirrored:
    kept = [np.array_equal(flipped[m][i], plain[m][i]) for i in range(64)]
    assert all(a or b for a, b in zip(mirrored[m], kept))
    assert 16 < sum(mirrored[m]) < 48
  assert mirrored['view_a'] != mirrored['view_b']
  # Another pair of prepared views, and the mistakes.
  other = data.get_dataset({'name': 'modelnet40', 'path': out, 'views': (6, 0)}, seed=0)
  np.testing.assert_array_equal(other.splits['test'].batch(np.array([0]))['inputs']['view_a'],
                                batch['inputs']['view_b'])
  with pytest.raises(UserError, match="no feature 'view_3'"):
    data.get_dataset({'name': 'modelnet40', 'path': out, 'views': (0, 3)}, seed=0)
  with pytest.raises(UserError, match='exactly two views'):
    data.get_dataset({'name': 'modelnet40', 'path': out, 'views': (0, 3, 6)}, seed=0)
  with pytest.raises(UserError, match='data.path is empty'):
    data.get_dataset({'name': 'modelnet40'}, seed=0)


@pytest.mark.parametrize('method', ['vanilla', 'greedy'])
def test_smoke_runs_through_the_cli(prepared, tmp_path, method):
  _, out, _ = prepared
  workdir = str(tmp_path / method)
  assert cli.main(['train', '--config', os.path.join(ROOT, 'configs', 'modelnet40.py') +
                   f':method={method},smoke,encoder=cnn', f'--config.data.path={out}',
                   '--config.num_epochs=1', '--config.progress_bar=False',
                   '--workdir', workdir]) == 0
  records = metrics.read_metrics(workdir)
  assert {r['split'] for r in records} >= {'train', 'val', 'test'}
  assert any('accuracy/view_a' in r for r in records if r['split'] == 'test')


def test_a_wrong_raw_layout_or_option_is_one_line(tmp_path, capsys):
  raw = tmp_path / 'raw'
  (raw / 'airplane' / 'train').mkdir(parents=True)
  for argv, message in (([], 'expected the folder'), (['--option', 'views=0,12'], 'views=(0, 12)'),
                        (['--option', 'views=3'], '2 or more distinct')):
    assert cli.main(['prepare', 'modelnet40', '--raw', str(raw), '--out',
                     str(tmp_path / 'out')] + argv) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and message in err, err
  assert not os.path.exists(tmp_path / 'out')
