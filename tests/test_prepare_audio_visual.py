"""CREMA-D, AVE and Kinetics-Sounds end to end: tiny raw files in each data set's real layout
(tones as WAV, a few solid-colour frames in FLV or MP4 with AAC audio, the split files), one of
them corrupt, `mmjax prepare` through the CLI, the records read back, a smoke run through the
CLI on the prepared folder."""

import importlib
import json
import os

import numpy as np
import pytest
import scipy.io.wavfile

from conftest import ROOT
import mmjax.data
from mmjax import cli, prepare
from mmjax.prepare import audio, ave, crema_d, kinetics_sounds
from test_audio_video import COLOURS, _tone, write_video

SMOKE_TRAIN = ['--config.num_epochs=1', '--config.progress_bar=False']


def _prepare(raw, out, name, *options):
  argv = ['prepare', name, '--raw', str(raw), '--out', str(out), '--workers', '0']
  for option in options:
    argv += ['--option', option]
  return cli.main(argv)


def _records(out):
  """``{split: [record, ...]}`` of a prepared folder."""
  return {split: [source[i] for i in range(len(source))]
          for split, source in prepare.open_prepared(str(out)).items()}


def _train(config, out, workdir, arguments='', *flags):
  path = os.path.join(ROOT, 'configs', config)
  return cli.main(['train', f'--config={path}:method=vanilla,smoke,path={out}{arguments}',
                   f'--workdir={workdir}', *SMOKE_TRAIN, *flags])


def _test_accuracy_logged(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r['split'] == 'test' and 'accuracy/fused' in r]


def _write_wav(path, seconds, frequency):
  samples = np.round(_tone(16000, seconds, frequency) * 32767).astype(np.int16)
  scipy.io.wavfile.write(path, 16000, samples)


@pytest.fixture
def crema_d_raw(tmp_path):
  """Two clips per emotion from OGM's train list, one per emotion from its test list; the
  first train clip's FLV is corrupt."""
  raw = tmp_path / 'CREMA-D'
  (raw / 'AudioWAV').mkdir(parents=True)
  (raw / 'VideoFlash').mkdir()
  splits = crema_d.clip_splits('ogm')
  chosen = []
  for label, emotion in enumerate(crema_d.CLASSES):
    of_emotion = [c for c in splits if c.split('_')[2] == emotion]
    chosen += [c for c in of_emotion if splits[c] == 'train'][:2]
    chosen += [c for c in of_emotion if splits[c] == 'test'][:1]
  for clip in chosen:
    label = crema_d.CLASSES.index(clip.split('_')[2])
    _write_wav(raw / 'AudioWAV' / f'{clip}.wav', 0.4, 200.0 + 150 * label)
    write_video(str(raw / 'VideoFlash' / f'{clip}.flv'), 'flv', 5, 12,
                lambda i, label=label: COLOURS[(label + i // 5) % 4], size=(16, 12))
  corrupt = next(c for c in chosen if splits[c] == 'train')
  (raw / 'VideoFlash' / f'{corrupt}.flv').write_bytes(b'FLV\x01\x05 not really a video')
  return raw, chosen, corrupt


def test_crema_d_prepare_then_train(tmp_path, crema_d_raw, capsys):
  raw, chosen, corrupt = crema_d_raw
  out = tmp_path / 'crema_d'
  assert _prepare(raw, out, 'crema_d', 'frame_size=8') == 0
  err = capsys.readouterr().err
  with open(out / 'failures.json') as f:
    failures = json.load(f)['failures']
  # Every clip of the split lists that is not in the raw folder, and the corrupt one, reported.
  assert len(failures) == 7442 - len(chosen) + 1 and str(len(failures)) in err
  broken = [f for f in failures if f['key'] == corrupt]
  assert len(broken) == 1 and 'not in the raw folder' not in broken[0]['error']
  assert all('not in the raw folder' in f['error'] for f in failures if f['key'] != corrupt)
  assert corrupt in (out / 'failures.txt').read_text()

  records = _records(out)
  assert sorted(records) == ['test', 'train']
  assert len(records['train']) == 11 and len(records['test']) == 6
  for record in records['train'] + records['test']:
    clip = record['key']
    label = crema_d.CLASSES.index(clip.split('_')[2])
    assert record['label'] == label
    assert record['audio'].shape == (257, 188) and record['audio'].dtype == np.float32
    # 12 frames at 5 fps: seconds 0, 1, 2 -> frames 0, 5, 10 of colours label, label+1, label+2.
    assert record['frames'].shape == (3, 8, 8, 3) and record['frames'].dtype == np.uint8
    np.testing.assert_allclose(record['frames'][:, 4, 4].astype(float),
                               COLOURS[[(label + s) % 4 for s in range(3)]], atol=12)
  first = records['train'][0]
  samples = audio.load_audio(str(raw / 'AudioWAV' / f"{first['key']}.wav"), 22050)
  np.testing.assert_array_equal(first['audio'], audio.ogm_log_spectrogram(samples))

  workdir = tmp_path / 'run'
  assert _train('crema_d.py', out, workdir, ',encoder=mlp') == 0
  assert _test_accuracy_logged(workdir)


@pytest.mark.parametrize('config_file', ['crema_d', 'ave', 'kinetics_sounds'])
@pytest.mark.parametrize('method', ['vanilla', 'uniform', 'fixed', 'unimodal', 'gblend', 'greedy',
                                    'ogm_ge'])
def test_every_method_configures_with_the_literature_recipe(config_file, method):
  module = importlib.import_module(f'configs.{config_file}')
  config = module.get_config(f'method={method}')
  assert config.data.name == config_file
  assert dict(config.optimizer) == dict(config.optimizer, name='sgd', learning_rate=1e-3,
                                        momentum=0.9, weight_decay=1e-4, schedule='step',
                                        step_epochs=(70,), step_factor=0.1)
  assert (config.batch_size, config.num_epochs) == (64, 100)
  encoders = config.model.encoders
  assert (encoders.audio.name, encoders.visual.name) == ('resnet18_spectrogram', 'resnet18_frames')
  assert encoders.audio.width == encoders.visual.width == 64
  smoke = module.get_config(f'method={method},smoke')
  assert smoke.model.encoders.audio.width == 4 and smoke.num_epochs == 2


def test_crema_d_data_set_carves_val_from_train_and_reads_frames(tmp_path, crema_d_raw):
  raw, _, _ = crema_d_raw
  out = tmp_path / 'crema_d'
  assert _prepare(raw, out, 'crema_d', 'frame_size=8') == 0
  dataset = crema_d.build(0, str(out), num_frames=2, frame_selection='first', image_size=6,
                          val_fraction=0.2, worker_count=0)
  sizes = {s: len(split) for s, split in dataset.splits.items()}
  assert sizes == {'train': 9, 'val': 2, 'test': 6} and dataset.num_classes == 6
  assert dataset.modality_shapes == {'audio': (257, 188, 1), 'visual': (2, 6, 6, 3)}
  batch = dataset.splits['test'].batch(np.arange(6))
  for row, label in enumerate(batch['label']):
    expected = (COLOURS[[(label + s) % 4 for s in range(2)]] / 255.0 - [0.485, 0.456, 0.406]) / [
        0.229, 0.224, 0.225]
    np.testing.assert_allclose(batch['inputs']['visual'][row, :, 3, 3], expected, atol=0.25)


def test_crema_d_augmentation_in_grain_workers_is_the_in_process_one(tmp_path, crema_d_raw):
  """The frame choice, resize, crop and flip run in Grain worker processes (the functions travel
  to them) and give the batches an in-process read gives."""
  raw, _, _ = crema_d_raw
  out = tmp_path / 'crema_d'
  assert _prepare(raw, out, 'crema_d', 'frame_size=8') == 0
  batches = {}
  for workers in (0, 1):
    dataset = crema_d.build(0, str(out), num_frames=1, frame_selection='first', image_size=8,
                            val_fraction=0.1, worker_count=workers)
    iterator = mmjax.data.TrainIterator(dataset.splits['train'], 4, 0)
    batches[workers] = [next(iterator) for _ in range(2)]
  for in_process, in_worker in zip(batches[0], batches[1]):
    for modality in ('audio', 'visual'):
      np.testing.assert_array_equal(in_process['inputs'][modality], in_worker['inputs'][modality])
  visual = batches[0][0]['inputs']['visual']
  assert visual.shape == (4, 1, 8, 8, 3) and visual.std() > 0.1


def test_crema_d_speaker_split_is_tfds_and_disjoint():
  from tensorflow_datasets.audio import crema_d as tfds_crema_d
  speakers = [str(s) for s in range(1001, 1092)]
  expected = tfds_crema_d._get_inter_splits_by_group(  # pylint: disable=protected-access
      [(s, s) for s in speakers], [('train', 0.7), ('validation', 0.1), ('test', 0.2)], 0)
  splits = crema_d.clip_splits('speaker')
  by_split = {}
  for clip, split in splits.items():
    by_split.setdefault(split, set()).add(clip.split('_')[0])
  assert by_split == {'train': expected['train'], 'val': expected['validation'],
                      'test': expected['test']}
  assert {s: sum(v == s for v in splits.values()) for s in by_split} == {
      'train': 5146, 'val': 738, 'test': 1558}
  ogm = crema_d.clip_splits('ogm')
  assert len(ogm) == 7442 and sum(v == 'test' for v in ogm.values()) == 744
  ogm_speakers = {s: {c.split('_')[0] for c, v in ogm.items() if v == s} for s in ('train', 'test')}
  assert len(ogm_speakers['train'] & ogm_speakers['test']) == 91  # not speaker-disjoint


def test_crema_d_wrong_layout_and_option_are_one_line(tmp_path, capsys):
  raw = tmp_path / 'raw'
  (raw / 'AudioWAV').mkdir(parents=True)
  out = tmp_path / 'out'
  assert _prepare(raw, out, 'crema_d') == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and 'VideoFlash/' in lines[0]
  (raw / 'VideoFlash').mkdir()
  assert _prepare(raw, out, 'crema_d', 'split=random') == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "'ogm'" in lines[0] and "'speaker'" in lines[0]
  assert not out.exists() or not os.listdir(out)


@pytest.mark.parametrize('path, flags, message', [
    ('', (), 'data.path is empty; set it to a folder made by `mmjax prepare crema_d'),
    ('/nonexistent', (), "data.path='/nonexistent' is not a finished prepared folder"),
    ('', ('--config.data.frame_selection=random',), "data.frame_selection must be one of"),
    ('', ('--config.data.num_frames=0',), 'data.num_frames must be an integer >= 1'),
])
def test_crema_d_config_mistakes_are_one_line(tmp_path, capsys, path, flags, message):
  workdir = tmp_path / 'run'
  assert _train('crema_d.py', path, workdir, '', *flags) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], lines
  assert not workdir.exists()


def _write_ave_clip(path, colour_of_second):
  """A 4-s 5-fps MP4 (H.264 + AAC) whose second s is ``colour_of_second(s)``."""
  write_video(str(path), 'h264', 5, 20, lambda i: COLOURS[colour_of_second(i // 5)], size=(16, 12),
              audio_rate=16000, audio_seconds=4.0)


def test_ave_prepare_then_train(tmp_path, capsys):
  raw = tmp_path / 'AVE_Dataset'
  (raw / 'AVE').mkdir(parents=True)
  categories = ['Bark', 'Cat', 'Church bell']
  lines = {'trainSet.txt': [], 'valSet.txt': [], 'testSet.txt': []}
  for i in range(8):
    video_id = f'vid{i:02d}-x_Y'
    split = 'trainSet.txt' if i < 4 else 'valSet.txt' if i < 6 else 'testSet.txt'
    lines[split].append(f'{categories[i % 3]}&{video_id}&good&1&2')
    _write_ave_clip(raw / 'AVE' / f'{video_id}.mp4', lambda s, i=i: (i + s) % 4)
  lines['trainSet.txt'].append('Cat&vid00-x_Y&good&0&3')  # a repeated id: its first line counts
  (raw / 'AVE' / 'vid03-x_Y.mp4').write_bytes(b'\x00\x00\x00\x18ftypmp42 truncated')
  for name, rows in lines.items():
    (raw / name).write_text('\n'.join(rows) + '\n')
  out = tmp_path / 'ave'
  assert _prepare(raw, out, 'ave', 'frame_size=8') == 0
  assert '1' in capsys.readouterr().err
  with open(out / 'failures.json') as f:
    failures = json.load(f)['failures']
  assert [f['key'] for f in failures] == ['vid03-x_Y']
  records = _records(out)
  assert {s: len(r) for s, r in records.items()} == {'train': 3, 'val': 2, 'test': 2}
  for record in records['train'] + records['val'] + records['test']:
    i = int(record['key'][3:5])
    assert record['label'] == ave.CLASSES.index(categories[i % 3])
    assert record['audio'].shape == (257, 1004)
    # The event is seconds 1..2: their first frames, colours (i + 1) % 4 and (i + 2) % 4.
    assert record['frames'].shape == (2, 8, 8, 3)
    np.testing.assert_allclose(record['frames'][:, 4, 4].astype(float),
                               COLOURS[[(i + 1) % 4, (i + 2) % 4]], atol=12)
  workdir = tmp_path / 'run'
  assert _train('ave.py', out, workdir, ',encoder=mlp', '--config.batch_size=2') == 0
  assert _test_accuracy_logged(workdir)


def test_kinetics_sounds_prepare_then_train(tmp_path):
  raw = tmp_path / 'kinetics400'
  train_lines = crema_d.read_list('kinetics_sounds_train.txt')[:5]
  test_lines = crema_d.read_list('kinetics_sounds_test.txt')[:2]
  written = {}
  for split, rows in (('train', train_lines), ('val', test_lines)):
    for row in rows:
      clip, label = row.split()
      if split == 'val':  # test ids are <youtube id>_<start>; the file is named as Kinetics does
        youtube_id, start = clip.rsplit('_', 1)
        stem = f'{youtube_id}_{int(start):06d}_{int(start) + 10:06d}'
      else:
        stem = clip
      folder = raw / split / kinetics_sounds.classes()[int(label)]
      folder.mkdir(parents=True, exist_ok=True)
      write_video(str(folder / f'{stem}.mp4'), 'h264', 4, 8, lambda i: COLOURS[i // 4],
                  size=(16, 12), audio_rate=16000, audio_seconds=2.0)
      written[clip] = int(label)
  corrupt = train_lines[0].split()[0]
  next(raw.rglob(f'{corrupt}.mp4')).write_bytes(b'not an mp4 at all')
  out = tmp_path / 'ks'
  assert _prepare(raw, out, 'kinetics_sounds', 'frame_size=8') == 0
  with open(out / 'failures.json') as f:
    failures = json.load(f)['failures']
  assert len(failures) == 14799 + 2597 - len(written) + 1
  assert [f for f in failures if f['key'] == corrupt]
  records = _records(out)
  assert {s: len(r) for s, r in records.items()} == {'train': 4, 'test': 2}
  for record in records['train'] + records['test']:
    assert record['label'] == written[record['key']]
    assert record['audio'].shape == (1024, 128)
    # About 2 s of audio (AAC pads it): 1 + (n - 400) // 160 fbank frames of 25 ms every 10 ms,
    # then the normalised zero padding up to 1024.
    path = next(raw.rglob(f'{record["key"].rsplit("_", 1)[0]}*.mp4'))
    frames = 1 + (len(audio.load_audio(str(path), 16000, channel=0)) - 400) // 160
    assert 198 <= frames < 220
    assert not np.allclose(record['audio'][frames - 1], 4.503877 / (2 * 5.141276))
    np.testing.assert_allclose(record['audio'][frames:], 4.503877 / (2 * 5.141276), rtol=1e-6)
    np.testing.assert_allclose(record['frames'][:, 4, 4].astype(float), COLOURS[:2], atol=12)
  workdir = tmp_path / 'run'
  assert _train('kinetics_sounds.py', out, workdir, ',encoder=mlp', '--config.batch_size=2',
                '--config.data.val_fraction=0.25') == 0
  assert _test_accuracy_logged(workdir)


def test_kinetics_sounds_lists_are_the_31_classes_of_ogm():
  names = kinetics_sounds.classes()
  assert len(names) == 31 and names == sorted(names)
  labels = {int(line.split()[1]) for split in ('train', 'test')
            for line in crema_d.read_list(f'kinetics_sounds_{split}.txt')}
  assert labels == set(range(31))
  assert len(crema_d.read_list('kinetics_sounds_train.txt')) == 14799
  assert len(crema_d.read_list('kinetics_sounds_test.txt')) == 2597
