"""Kinetics-Sounds: the Kinetics-400 clips of the classes one can hear, 31 classes as the OGM-GE
code family uses it.

Kinetics-Sounds is not a download of its own: it is a subset of Kinetics-400 (Kay et al. 2017)
picked by class. "Look, Listen and Learn" (Arandjelovic & Zisserman, ICCV 2017) defined it with
34 classes; some classes cannot be found in today's Kinetics-400 under their names, so papers use
32 (CrissCross: the 31 below plus ``strumming_guitar``, pritamqu/CrissCross issue 4), 33
(DMRNet's release, shicaiwei123/ECCV2024-DMRNet issue 3) or 31 (OGM-GE, BalanceBenchmark,
AdaMML: IBM/AdaMML issue 3). mmjax ships the **31-class** list of the OGM-GE code family with its
split, 14,799 train / 2,597 test clips (GeWu-Lab/OGM-GE_CVPR2022 ``data/KineticSound/my_train.txt``,
``my_test.txt``; the class names of GeWu-Lab/BML_TPAMI2024 ``code/dataset/KS.json``), in
``lists/``; numbers of the 32- and 34-class variants are not comparable with it.

``mmjax prepare kinetics_sounds --raw K400 --out DIR`` finds the clips under ``--raw`` (any
folder layout, e.g. ``train/``, ``val/`` or one folder per class, as the Kinetics downloaders
write them) by file name: ``<youtube id>_<start:06d>_<end:06d>.mp4`` (also ``.mkv``, ``.webm``).
A listed clip that is not there (YouTube removals) is reported as a failure. Per clip, as OGM-GE
(``data/KineticSound/process_audio.py``; its ``mp4_to_wav.py`` extracts 16-kHz WAVs with FFmpeg):

- ``audio``: float32 1024 x 128, :func:`mmjax.prepare.audio.ast_fbank` of the first audio
  channel at 16 kHz (``torchaudio.compliance.kaldi.fbank`` reads channel 0);
- ``frames``: uint8 ``[T, S, S, 3]``, the first frame of each second (10 for a 10-s clip).

The data set ``kinetics_sounds`` reads the prepared folder: ``audio`` ``[1024, 128, 1]``,
``visual`` ``[num_frames, image_size, image_size, 3]`` (OGM-GE: 3 frames ``seg * i``, i.e.
``frame_selection='spread'``); val is carved from train (``val_fraction``), as OGM-GE has none.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from mmjax.data.dataset import MultiModalDataset
from mmjax.data.registry import register
from mmjax.errors import UserError
from mmjax.prepare import audio, core, crema_d, video

NAME = 'kinetics_sounds'
SAMPLE_RATE = 16000
VIDEO_SUFFIXES = ('.mp4', '.mkv', '.webm')
_KINETICS_STEM = re.compile(r'^(?P<id>.+)_(?P<start>\d{6})_(?P<end>\d{6})$')


def classes() -> list[str]:
  """The 31 class names, label = index."""
  return crema_d.read_list('kinetics_sounds_classes.txt')


def clip_index(raw_dir: str) -> dict[str, str]:
  """``{clip id: path}`` of every video file under ``raw_dir``: its file stem, and for a
  Kinetics stem ``<id>_<start:06d>_<end:06d>`` also ``<id>_<start>`` (the test list's ids)."""
  index = {}
  for path in core.iter_files(raw_dir, VIDEO_SUFFIXES):
    stem = os.path.splitext(os.path.basename(path))[0]
    index.setdefault(stem, path)
    match = _KINETICS_STEM.match(stem)
    if match:
      index.setdefault(f'{match["id"]}_{int(match["start"])}', path)
  return index


@core.register_preparer(NAME, options={'frame_size': 224})
class KineticsSounds:
  """Kinetics-Sounds (31 classes) from Kinetics-400 clips: OGM-GE's fbank and 1-fps frames."""

  def list_examples(self, raw_dir: str, frame_size: int) -> list[core.Example]:
    if frame_size < 1:
      raise UserError(f'prepare {NAME}: frame_size={frame_size} must be an integer >= 1.')
    index = clip_index(raw_dir)
    if not index:
      raise UserError(f'prepare {NAME}: --raw {raw_dir!r} holds no video files '
                      f'({", ".join(VIDEO_SUFFIXES)}); it must hold the Kinetics-400 clips, '
                      'named <youtube id>_<start:06d>_<end:06d>.mp4 (docs/datasets.md).')
    examples = []
    for split in ('train', 'test'):
      for line in crema_d.read_list(f'kinetics_sounds_{split}.txt'):
        clip, label = line.split()
        path = index.get(clip, os.path.join(raw_dir, clip + '.mp4'))
        examples.append(core.Example(clip, split, int(label), (path,)))
    return examples

  def decode(self, example: core.Example, frame_size: int) -> dict[str, np.ndarray]:
    crema_d.check_present(example)
    (path,) = example.files
    return {'audio': audio.ast_fbank(audio.load_audio(path, SAMPLE_RATE, channel=0), SAMPLE_RATE),
            'frames': video.frames_per_second(path, frame_size)}

  @staticmethod
  def synthetic_raw(raw_dir: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """Writes Kinetics-400 clips for benchmarks (``benchmarks/input_pipeline.py``): the first
    ``examples`` train clips and ``max(1, examples // 8)`` test clips of the lists, each a 10-s
    640 x 360 24-fps MP4 with 16-kHz AAC audio, under ``train/<class>/`` and ``val/<class>/``
    with Kinetics' file names; returns the options to prepare them with (the defaults). The
    other listed clips are then reported missing, as in an incomplete download."""
    rng = np.random.default_rng(seed)
    names = classes()
    rows = {'train': crema_d.read_list('kinetics_sounds_train.txt')[:examples],
            'val': crema_d.read_list('kinetics_sounds_test.txt')[:max(1, examples // 8)]}
    for split, lines in rows.items():
      for line in lines:
        clip, label = line.split()
        if not _KINETICS_STEM.match(clip):  # a test id <youtube id>_<start>: Kinetics' name
          youtube_id, start = clip.rsplit('_', 1)
          clip = f'{youtube_id}_{int(start):06d}_{int(start) + 10:06d}'
        folder = os.path.join(raw_dir, split, names[int(label)])
        os.makedirs(folder, exist_ok=True)
        video.write_clip(os.path.join(folder, clip + '.mp4'),
                         video.synthetic_frames(10.0, 24, 640, 360, rng.integers(64, 256, 3)), 24,
                         codec='h264',
                         audio=crema_d.synthetic_tone(10.0, 200.0 + 20 * int(label), rng),
                         sample_rate=SAMPLE_RATE)
    return {}

  def metadata(self, frame_size: int) -> dict[str, Any]:
    return {
        'classes': classes(),
        'modalities': crema_d.FEATURES,
        'preprocessing': {
            'audio': 'channel 0 at 16 kHz (scipy resample_poly), mean removed, Kaldi fbank (128 '
                     'mel, 25 ms Hann, 10 ms shift, htk_compat, dither 0), pad/cut to 1024 '
                     'frames, (x + 4.503877) / (2 * 5.141276): 1024 x 128 (OGM-GE '
                     'data/KineticSound/process_audio.py)',
            'frames': f'first frame of each second, RGB uint8 resized to {frame_size} x '
                      f'{frame_size} (PIL bilinear)',
            'split': 'OGM-GE data/KineticSound/my_train.txt / my_test.txt (31 classes)',
        },
    }


@register(NAME, options={'path': '', 'num_frames': 3, 'frame_selection': 'spread',
                                    'image_size': 224, 'val_fraction': 0.1, 'worker_count': 0})
def build(seed: int, path: str, num_frames: int, frame_selection: str, image_size: int,
          val_fraction: float, worker_count: int) -> MultiModalDataset:
  """Kinetics-Sounds prepared by `mmjax prepare kinetics_sounds`: fbank + frames, 31 classes."""
  return crema_d.build_audio_visual(NAME, path, seed, num_frames, frame_selection, image_size,
                                    val_fraction, worker_count)
