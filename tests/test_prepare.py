"""The ``mmjax prepare`` core on a tiny preparer defined here: shards, workers, resume, failures,
metadata, reading back through Grain, and the one-line mistakes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mmjax.prepare
from mmjax import cli, faults
from mmjax.errors import UserError
from mmjax.prepare import core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
CORRUPT = 'not a number'
INTERRUPT_ENV = 'TEST_PREPARE_INTERRUPT_AT'


class Interrupted(BaseException):
  """Stands in for a Ctrl-C in the middle of a shard (not an ``Exception``: not a decode error)."""


@mmjax.prepare.register_preparer('tiny_numbers', options={'scale': 1.0, 'channels': (0, 1)})
class TinyNumbers:
  """Numbers in text files: RAW/<split>/<label>_<id>.txt, one line of numbers per channel."""

  def list_examples(self, raw_dir, scale, channels):
    del scale, channels
    examples = []
    for split in ('train', 'test'):
      folder = os.path.join(raw_dir, split)
      if not os.path.isdir(folder):
        raise UserError(f'tiny_numbers: expected the folder {folder}.')
      for name in sorted(os.listdir(folder), key=lambda n: n.split('_')[1]):
        label = int(name.split('_')[0])
        examples.append(core.Example(f'{split}/{name[:-4]}', split, label,
                                     (os.path.join(folder, name),)))
    return examples

  def decode(self, example, scale, channels):
    if example.key == os.environ.get(INTERRUPT_ENV):
      raise Interrupted(example.key)
    with open(example.files[0], encoding='utf-8') as f:
      rows = [[float(v) for v in line.split()] for line in f.read().splitlines()]
    values = np.asarray(rows, np.float32) * scale
    return {f'channel_{c}': values[c] for c in channels}

  def metadata(self, scale, channels):
    return {'classes': ['zero', 'one', 'two'],
            'modalities': {f'c{c}': f'channel_{c}' for c in channels},
            'preprocessing': f'the numbers times {scale}'}


def write_raw(root, corrupt=True):
  """7 train and 3 test examples, labels i % 3; train example 4 is corrupt when ``corrupt``."""
  for split, count in (('train', 7), ('test', 3)):
    os.makedirs(root / split)
    for i in range(count):
      text = f'{i} {i + 1} {i + 2}\n{-i} {2 * i} {i * i}\n'
      if corrupt and split == 'train' and i == 4:
        text = CORRUPT
      (root / split / f'{i % 3}_{i:03d}.txt').write_text(text)
  return str(root)


def snapshot(folder):
  """Every file under ``folder`` with its bytes (to show that nothing changed)."""
  found = {}
  for dirpath, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, folder)] = f.read()
  return found


def outputs(folder):
  """The output files that define a prepared folder: shards, labels, failures, metadata."""
  return {k: v for k, v in snapshot(folder).items()
          if not k.startswith(core.PROGRESS_DIR) and k != core.STATE_FILE}


@pytest.fixture
def raw(tmp_path):
  return write_raw(tmp_path / 'raw')


def test_records_metadata_failures_and_reading(raw, tmp_path, capsys):
  out = str(tmp_path / 'out')
  result = mmjax.prepare.prepare('tiny_numbers', raw, out, workers=0, examples_per_shard=2,
                                 progress=False)
  assert result.counts == {'train': 6, 'test': 3}
  assert sorted(f for f in os.listdir(out) if f.endswith('.array_record')) == (
      [f'test-{k:05d}-of-00002.array_record' for k in range(2)]
      + [f'train-{k:05d}-of-00004.array_record' for k in range(4)])
  # The corrupt file is reported, with its file and error, and nothing else is.
  failures = json.load(open(os.path.join(out, 'failures.json')))
  assert failures['count'] == 1
  [failure] = failures['failures']
  assert failure['key'] == 'train/1_004'
  assert failure['files'] == [os.path.join(raw, 'train', '1_004.txt')]
  assert failure['error'] == "ValueError: could not convert string to float: 'not'"
  report = open(os.path.join(out, 'failures.txt')).read().splitlines()
  assert report[0].startswith('1 example(s) could not be decoded')
  assert report[1].startswith('train/1_004\t') and report[1].endswith(failure['error'])
  assert '1 could not be decoded' in capsys.readouterr().err
  metadata = json.load(open(os.path.join(out, 'metadata.json')))
  assert metadata['name'] == 'tiny_numbers' and metadata['counts'] == {'train': 6, 'test': 3}
  assert metadata['options'] == {'scale': 1.0, 'channels': [0, 1]}
  assert metadata['features'] == {'channel_0': {'dtype': 'float32', 'shape': [3]},
                                  'channel_1': {'dtype': 'float32', 'shape': [3]}}
  assert metadata['classes'] == ['zero', 'one', 'two'] and metadata['failures'] == 1
  assert metadata['mmjax_version']
  # Read back through Grain's ArrayRecordDataSource: every record, in the listed order.
  sources = mmjax.prepare.open_prepared(out, 'tiny_numbers')
  assert sorted(sources) == ['test', 'train'] and len(sources['train']) == 6
  kept = [i for i in range(7) if i != 4]
  for position, i in enumerate(kept):
    record = sources['train'][position]
    assert record['key'] == f'train/{i % 3}_{i:03d}' and record['label'] == i % 3
    np.testing.assert_array_equal(record['channel_0'], [i, i + 1, i + 2])
    np.testing.assert_array_equal(record['channel_1'], [-i, 2 * i, i * i])
  assert [r['key'] for r in sources['test'].__getitems__([2, 0])] == ['test/2_002', 'test/0_000']
  np.testing.assert_array_equal(mmjax.prepare.read_labels(out)['train'], [i % 3 for i in kept])


def test_options_reach_decode_and_metadata(raw, tmp_path):
  out = str(tmp_path / 'out')
  mmjax.prepare.prepare('tiny_numbers', raw, out, options=['scale=0.5', 'channels=1'],
                        workers=0, progress=False)
  record = mmjax.prepare.open_prepared(out)['test'][1]
  assert set(record) == {'channel_1', 'label', 'key'}
  np.testing.assert_array_equal(record['channel_1'], [-0.5, 1.0, 0.5])
  assert json.load(open(os.path.join(out, 'metadata.json')))['options'] == {
      'scale': 0.5, 'channels': [1]}


def test_an_interrupted_run_resumes_to_the_uninterrupted_output(raw, tmp_path, monkeypatch):
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  mmjax.prepare.prepare('tiny_numbers', raw, full, workers=0, examples_per_shard=2,
                        progress=False)
  # Interrupted in the third train shard (examples 4, 5): two train shards done (train first).
  monkeypatch.setenv(INTERRUPT_ENV, 'train/2_005')
  with pytest.raises(Interrupted):
    mmjax.prepare.prepare('tiny_numbers', raw, resumed, workers=0, examples_per_shard=2,
                          progress=False)
  done = sorted(os.listdir(os.path.join(resumed, core.PROGRESS_DIR)))
  assert done == ['train-00000-of-00004.json', 'train-00001-of-00004.json']
  assert not os.path.exists(os.path.join(resumed, core.METADATA_FILE))
  with pytest.raises(UserError, match='not a finished prepared folder.*rerun'):
    mmjax.prepare.open_prepared(resumed)
  finished = {name: os.stat(os.path.join(resumed, name.replace('.json', '.array_record')))
              .st_mtime_ns for name in done}
  monkeypatch.delenv(INTERRUPT_ENV)
  mmjax.prepare.prepare('tiny_numbers', raw, resumed, workers=0, examples_per_shard=2,
                        progress=False)
  assert outputs(resumed) == outputs(full)
  for name, mtime in finished.items():  # finished shards were not redone
    assert os.stat(os.path.join(resumed, name.replace('.json', '.array_record'))
                   ).st_mtime_ns == mtime


def test_a_killed_command_resumes_to_the_uninterrupted_output(raw, tmp_path):
  """``mmjax prepare`` in 2 worker processes killed (exit 137) after its second shard, then the
  same command again: the output equals that of one uninterrupted run in this process (so
  worker processes also write what one process writes)."""
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  argv = ['prepare', 'tiny_numbers', '--raw', raw, '--examples_per_shard', '2', '--workers', '2']
  program = (f'import sys; sys.path[:0] = [{ROOT!r}, {TESTS!r}]; import test_prepare; '
             'from mmjax import cli; sys.exit(cli.main(sys.argv[1:]))')
  env = {**os.environ, faults.ENV_VAR: 'prepare_shard:2'}
  killed = subprocess.run([sys.executable, '-c', program, *argv, '--out', resumed], env=env,
                          capture_output=True, text=True, check=False)
  assert killed.returncode == faults.EXIT_CODE, killed.stderr
  assert len(os.listdir(os.path.join(resumed, core.PROGRESS_DIR))) == 2
  assert not os.path.exists(os.path.join(resumed, core.METADATA_FILE))
  assert cli.main(argv + ['--out', resumed]) == 0
  assert cli.main(argv + ['--out', full, '--workers', '0']) == 0
  assert outputs(resumed) == outputs(full)


def _refused(argv, capsys, match, out=None):
  before = snapshot(out) if out and os.path.isdir(out) else None
  assert cli.main(['prepare'] + argv) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('mmjax: error: '), err
  assert match in err, err
  if out is not None:
    assert (snapshot(out) if os.path.isdir(out) else None) == before


def test_mistakes_are_one_line_and_leave_out_unchanged(raw, tmp_path, capsys):
  out = str(tmp_path / 'out')
  base = ['tiny_numbers', '--raw', raw, '--out', out, '--workers', '0']
  _refused(['no_such_set', '--raw', raw, '--out', out], capsys, "'no_such_set' is not a data set",
           out)
  _refused(base + ['--option', 'colour=red'], capsys, "'colour' is not an option", out)
  _refused(base + ['--option', 'scale=big'], capsys, "scale='big' must be a float", out)
  _refused(base + ['--option', 'scale'], capsys, 'must be KEY=VALUE', out)
  _refused(base + ['--workers', 'many'], capsys, "'many' must be an integer >= 0", out)
  _refused(base + ['--examples_per_shard', '0'], capsys, 'must be an integer >= 1', out)
  _refused(['tiny_numbers', '--raw', raw], capsys, '--out', out)
  _refused(['tiny_numbers', '--raw', str(tmp_path / 'nowhere'), '--out', out], capsys,
           'is not a folder', out)
  (tmp_path / 'empty').mkdir()
  _refused(['tiny_numbers', '--raw', str(tmp_path / 'empty'), '--out', out], capsys,
           'expected the folder', out)  # the preparer's own layout check
  _refused(['tiny_numbers', '--raw', raw, '--out', os.path.join(raw, 'records')], capsys,
           'inside --raw', out)
  (tmp_path / 'a_file').write_text('x')
  _refused(['tiny_numbers', '--raw', raw, '--out', str(tmp_path / 'a_file')], capsys, 'is a file',
           str(tmp_path / 'a_file'))
  foreign = tmp_path / 'foreign'
  foreign.mkdir()
  (foreign / 'notes.txt').write_text('mine')
  _refused(['tiny_numbers', '--raw', raw, '--out', str(foreign)], capsys, 'not made by mmjax',
           str(foreign))
  assert not os.path.exists(out)
  # A finished (or interrupted) output resumes only with the same options and raw files.
  assert cli.main(['prepare'] + base) == 0
  capsys.readouterr()
  _refused(base + ['--option', 'scale=2'], capsys, "begun with options={'scale': 1.0", out)
  _refused(base + ['--examples_per_shard', '3'], capsys, 'examples_per_shard=1024', out)
  (tmp_path / 'raw' / 'train' / '0_100.txt').write_text('1 2 3\n4 5 6\n')
  _refused(base, capsys, 'other raw files', out)


def test_a_finished_output_reruns_as_a_no_op(raw, tmp_path):
  out = str(tmp_path / 'out')
  mmjax.prepare.prepare('tiny_numbers', raw, out, workers=0, progress=False)
  before = outputs(out)
  mmjax.prepare.prepare('tiny_numbers', raw, out, workers=0, progress=False)
  assert outputs(out) == before


def test_prepared_dataset_reads_records_and_carves_val(raw, tmp_path):
  out = str(tmp_path / 'out')
  mmjax.prepare.prepare('tiny_numbers', raw, out, workers=0, progress=False)
  with pytest.raises(UserError, match='no val split'):
    mmjax.prepare.prepared_dataset(out, 'tiny_numbers', {'a': 'channel_0', 'b': 'channel_1'})
  with pytest.raises(UserError, match="no feature 'channel_7'"):
    mmjax.prepare.prepared_dataset(out, 'tiny_numbers', {'a': 'channel_7'})
  with pytest.raises(UserError, match="holds the prepared data set 'tiny_numbers', not 'other'"):
    mmjax.prepare.prepared_dataset(out, 'other', {'a': 'channel_0'})
  with pytest.raises(UserError, match='data.path is empty'):
    mmjax.prepare.prepared_dataset('', 'tiny_numbers', {'a': 'channel_0'})
  dataset = mmjax.prepare.prepared_dataset(
      out, 'tiny_numbers', {'a': 'channel_0', 'b': 'channel_1'},
      preprocess={'a': lambda x: x / 2}, val_from_train=lambda y: (np.arange(4), np.arange(4, 6)))
  assert dataset.num_classes == 3 and dataset.modalities == ('a', 'b')
  assert [len(dataset.splits[s]) for s in ('train', 'val', 'test')] == [4, 2, 3]
  # val holds train records 4 and 5: raw examples 5 and 6 (4 was corrupt).
  batch = dataset.splits['val'].batch(np.arange(2))
  np.testing.assert_array_equal(batch['inputs']['a'], [[2.5, 3, 3.5], [3, 3.5, 4]])
  np.testing.assert_array_equal(batch['inputs']['b'], [[-5, 10, 25], [-6, 12, 36]])
  np.testing.assert_array_equal(batch['label'], [2, 0])
