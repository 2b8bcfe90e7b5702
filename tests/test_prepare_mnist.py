"""Full Colored-and-gray MNIST from MNIST's IDX files: ``mmjax prepare mnist``, then ``cgmnist``
with ``source='prepared'`` trained through the CLI. The IDX files are written here, tiny."""

import gzip
import json
import os
import struct

import numpy as np
import pytest

from mmjax import cli, data, metrics
from mmjax.data import cgmnist
from mmjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST, TRUNCATED = 60, 20, 3


def idx_bytes(array, magic):
  """IDX: big-endian magic, one uint32 per dimension, then the uint8 values (LeCun's page)."""
  return struct.pack('>I', magic) + b''.join(struct.pack('>I', d) for d in array.shape) + (
      array.astype(np.uint8).tobytes())


def write_mnist(root, *, truncate_train_images=TRUNCATED):
  """Tiny MNIST IDX files (train gzipped, test not); the train image file lacks the bytes of its
  last ``truncate_train_images`` digits. Returns ``{split: (images, labels)}``."""
  rng = np.random.default_rng(0)
  os.makedirs(root)
  written = {}
  for split, stem, count, gz in (('train', 'train', NUM_TRAIN, True),
                                 ('test', 't10k', NUM_TEST, False)):
    labels = np.arange(count) % 10
    images = rng.integers(0, 256, (count, 28, 28)).astype(np.uint8)
    image_file = idx_bytes(images, 0x803)
    if split == 'train' and truncate_train_images:
      image_file = image_file[:-truncate_train_images * 784 + 100]
    for name, content in ((f'{stem}-images-idx3-ubyte', image_file),
                          (f'{stem}-labels-idx1-ubyte', idx_bytes(labels, 0x801))):
      if gz:
        (root / (name + '.gz')).write_bytes(gzip.compress(content))
      else:
        (root / name).write_bytes(content)
    written[split] = images, labels
  return written


def test_prepare_reports_the_truncated_digits_and_cgmnist_trains_on_the_rest(tmp_path, capsys):
  raw, out = tmp_path / 'mnist_raw', str(tmp_path / 'mnist')
  written = write_mnist(raw)
  command = ['prepare', 'mnist', '--raw', str(raw), '--out', out, '--workers', '0']
  assert cli.main(command) == 2  # 60 digits are not the full 60,000
  assert 'holds 60 labels, not the 60000' in capsys.readouterr().err
  assert not os.path.exists(out)
  assert cli.main(command + ['--option', 'allow_subset=true']) == 0
  assert f'{TRUNCATED} could not be decoded' in capsys.readouterr().err
  failures = json.load(open(os.path.join(out, 'failures.json')))
  assert failures['count'] == TRUNCATED
  assert [f['key'] for f in failures['failures']] == [
      f'train/{i:05d}' for i in range(NUM_TRAIN - TRUNCATED, NUM_TRAIN)]
  assert all('truncated' in f['error'] and f['files'][0].endswith('train-images-idx3-ubyte.gz')
             for f in failures['failures'])
  metadata = json.load(open(os.path.join(out, 'metadata.json')))
  assert metadata['counts'] == {'train': NUM_TRAIN - TRUNCATED, 'test': NUM_TEST}
  assert metadata['features'] == {'image': {'dtype': 'uint8', 'shape': [28, 28, 1]}}

  # cgmnist reads the digits as written, scaled to [0, 1], and colours them as it always has.
  dataset = data.get_dataset({'name': 'cgmnist', 'source': 'prepared', 'path': out}, seed=0)
  splits = dataset.splits
  assert len(splits['train']) + len(splits['val']) == NUM_TRAIN - TRUNCATED
  assert len(splits['test']) == NUM_TEST
  images, labels = written['test']
  np.testing.assert_array_equal(splits['test'].inputs['gray'][..., 0], images / np.float32(255))
  np.testing.assert_array_equal(splits['test'].label, labels)
  pool = np.concatenate([splits['train'].inputs['gray'], splits['val'].inputs['gray']])
  expected = written['train'][0][:NUM_TRAIN - TRUNCATED] / np.float32(255)
  np.testing.assert_array_equal(np.sort(pool.reshape(len(pool), -1), axis=0),
                                np.sort(expected.reshape(len(expected), -1), axis=0))
  gray, color = splits['train'].inputs['gray'], splits['train'].inputs['color']
  ratio = color.sum(axis=(1, 2)) / gray.sum(axis=(1, 2))  # each digit's colour, [N, 3]
  mean_colour = np.array([ratio[splits['train'].label == c].mean(0) for c in range(10)])
  assert np.abs(mean_colour - cgmnist.CLASS_COLORS).max() < 0.15  # class colours plus jitter

  workdir = str(tmp_path / 'run')
  assert cli.main(['train', '--config', os.path.join(ROOT, 'configs', 'cgmnist.py') +
                   ':method=vanilla,smoke,source=prepared', f'--config.data.path={out}',
                   '--config.num_epochs=1', '--config.progress_bar=False',
                   '--workdir', workdir]) == 0
  assert {r['split'] for r in metrics.read_metrics(workdir)} >= {'train', 'val', 'test'}


def test_a_wrong_raw_folder_or_path_is_one_line(tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  assert cli.main(['prepare', 'mnist', '--raw', str(tmp_path / 'empty'), '--out',
                   str(tmp_path / 'out')]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'has no train-images-idx3-ubyte.gz' in err
  write_mnist(tmp_path / 'raw', truncate_train_images=0)
  (tmp_path / 'raw' / 't10k-labels-idx1-ubyte').write_bytes(b'\x00\x00\x08\x03garbage')
  assert cli.main(['prepare', 'mnist', '--raw', str(tmp_path / 'raw'), '--out',
                   str(tmp_path / 'out'), '--option', 'allow_subset=1']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'the label file cannot be read' in err and 'magic' in err
  assert not os.path.exists(tmp_path / 'out')
  with pytest.raises(UserError, match='data.path is empty'):
    data.get_dataset({'name': 'cgmnist', 'source': 'prepared'}, seed=0)
  with pytest.raises(UserError, match='not a finished prepared folder'):
    data.get_dataset({'name': 'cgmnist', 'source': 'prepared', 'path': str(tmp_path)}, seed=0)
  with pytest.raises(ValueError, match="applies to source='prepared' only"):
    data.get_dataset({'name': 'cgmnist', 'path': str(tmp_path)}, seed=0)
