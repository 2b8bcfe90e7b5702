"""CREMA-D (Cao et al. 2014): 7,442 clips of 91 actors, 6 emotions, audio + face video.

``mmjax prepare crema_d --raw CREMA-D --out DIR`` reads the raw release
(github.com/CheyneyComputerScience/CREMA-D, Git LFS): ``AudioWAV/<clip>.wav`` (16 kHz mono) and
``VideoFlash/<clip>.flv`` (480 x 360, 30 fps), clip names ``1001_DFA_ANG_XX`` (actor, sentence,
emotion, level). Per clip it stores, as OGM-GE prepares it (GeWu-Lab/OGM-GE_CVPR2022,
``dataset/CramedDataset.py``, ``data/CREMAD/video_preprocessing.py``):

- ``audio``: float32 257 x 188, :func:`mmjax.prepare.audio.ogm_log_spectrogram` of the WAV at
  22,050 Hz;
- ``frames``: uint8 ``[T, S, S, 3]``, the first frame of each second of the FLV
  (:func:`mmjax.prepare.video.frames_per_second`; 2-3 per clip), ``S = frame_size``.

Labels: NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5 (OGM-GE's ``class_dict``).

Splits (option ``split``):

- ``'ogm'`` (default): the split of the balancing literature, 6,698 train / 744 test clips
  (OGM-GE's ``data/CREMAD/train.csv`` / ``test.csv``, shipped in ``lists/``; PMR and InfoReg
  use the same files). It is random, not speaker-disjoint: all 91 speakers are in both parts.
  It has no val split: the literature picks the best epoch on test (``docs/datasets.md``); the
  data set ``crema_d`` carves a stratified val split out of train instead (``val_fraction``).
- ``'speaker'``: TFDS ``crema_d``'s speaker-disjoint split (63 / 9 / 19 speakers; 5,146 / 738 /
  1,558 clips), with its own val split.

The data set ``crema_d`` reads the prepared folder: modality ``audio`` ``[257, 188, 1]`` (the
spectrogram as a one-channel image) and ``visual`` ``[num_frames, image_size, image_size, 3]``
(OGM-GE: 1 frame per clip), ImageNet-normalised, with RandomResizedCrop + flip per frame in
training (:mod:`mmjax.prepare.video`), in Grain workers (``worker_count``).

The helpers here that read split lists, check raw files and build a data set from a prepared
folder are shared with :mod:`mmjax.prepare.ave` and :mod:`mmjax.prepare.kinetics_sounds`.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Any

import numpy as np

from mmjax.data.dataset import (MultiModalDataset, check_choice, check_fraction, check_int,
                                 derive_seed, stratified_split)
from mmjax.data.registry import register
from mmjax.errors import UserError
from mmjax.prepare import audio, core, video

NAME = 'crema_d'
CLASSES = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')
SPLITS = ('ogm', 'speaker')
SAMPLE_RATE = 22050
FEATURES = {'audio': 'audio', 'visual': 'frames'}


def read_list(file_name: str) -> list[str]:
  """The lines of a data file in ``mmjax/prepare/lists/``."""
  text = resources.files('mmjax.prepare').joinpath('lists', file_name).read_text()
  return [line.strip() for line in text.splitlines() if line.strip()]


def clip_splits(split: str) -> dict[str, str]:
  """``{clip name: 'train' | 'val' | 'test'}`` of every clip in split scheme ``split``."""
  ogm = {clip: part for part in ('train', 'test') for clip in read_list(f'crema_d_ogm_{part}.txt')}
  if split == 'ogm':
    return ogm
  speakers = dict(line.split() for line in read_list('crema_d_speaker_split.txt'))
  return {clip: speakers[clip.split('_')[0]] for clip in ogm}


def check_present(example: core.Example) -> None:
  """A ``FileNotFoundError`` naming the missing raw files of ``example``, if any (a clip of the
  split lists that the raw folder lacks is reported as a failure, never silently dropped)."""
  missing = [f for f in example.files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f'not in the raw folder: {", ".join(missing)}')


def check_folders(raw_dir: str, folders: tuple[str, ...], name: str) -> None:
  """A :class:`UserError` naming the first of ``folders`` missing under ``raw_dir``."""
  for folder in folders:
    if not os.path.isdir(os.path.join(raw_dir, folder)):
      raise UserError(f'prepare {name}: --raw {raw_dir!r} has no folder {folder}/; it must hold '
                      f'{" and ".join(f + "/" for f in folders)} as the data set ships them '
                      '(docs/datasets.md).')


def synthetic_tone(seconds: float, frequency: float, rng: np.random.Generator,
                   sample_rate: int = 16000) -> np.ndarray:
  """A tone in noise, float32 in [-1, 1] (benchmark audio)."""
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  return (0.4 * np.sin(2 * np.pi * frequency * t)
          + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def write_synthetic_wav(path: str, seconds: float, frequency: float, rng: np.random.Generator
                        ) -> None:
  """:func:`synthetic_tone` as a 16-kHz 16-bit WAV, as CREMA-D's."""
  import scipy.io.wavfile  # pylint: disable=import-outside-toplevel
  samples = np.round(synthetic_tone(seconds, frequency, rng) * 32767).astype(np.int16)
  scipy.io.wavfile.write(path, 16000, samples)


@core.register_preparer(NAME, options={'split': 'ogm', 'frame_size': 224})
class CremaD:
  """CREMA-D: OGM-GE's 257 x 188 log spectrogram and 1-fps face frames, split 'ogm' or 'speaker'."""

  def list_examples(self, raw_dir: str, split: str, frame_size: int) -> list[core.Example]:
    _check_options(split, frame_size)
    check_folders(raw_dir, ('AudioWAV', 'VideoFlash'), NAME)
    return [core.Example(clip, part, CLASSES.index(clip.split('_')[2]),
                         (os.path.join(raw_dir, 'AudioWAV', clip + '.wav'),
                          os.path.join(raw_dir, 'VideoFlash', clip + '.flv')))
            for clip, part in clip_splits(split).items()]

  def decode(self, example: core.Example, split: str, frame_size: int) -> dict[str, np.ndarray]:
    del split
    check_present(example)
    wav, flv = example.files
    return {'audio': audio.ogm_log_spectrogram(audio.load_audio(wav, SAMPLE_RATE)),
            'frames': video.frames_per_second(flv, frame_size)}

  @staticmethod
  def synthetic_raw(raw_dir: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """Writes CREMA-D's layout for benchmarks (``benchmarks/input_pipeline.py``): the first
    ``examples`` train clips and ``max(1, examples // 8)`` test clips of the OGM split, each a
    2.5-s 16-kHz WAV (a tone in noise) and a 2.5-s 480 x 360 30-fps FLV like the real ones;
    returns the options to prepare them with (the defaults). The other clips of the split lists
    are then reported missing, as in an incomplete download."""
    rng = np.random.default_rng(seed)
    splits = clip_splits('ogm')
    clips = ([c for c in splits if splits[c] == 'train'][:examples]
             + [c for c in splits if splits[c] == 'test'][:max(1, examples // 8)])
    for folder in ('AudioWAV', 'VideoFlash'):
      os.makedirs(os.path.join(raw_dir, folder), exist_ok=True)
    for clip in clips:
      label = CLASSES.index(clip.split('_')[2])
      write_synthetic_wav(os.path.join(raw_dir, 'AudioWAV', clip + '.wav'), 2.5,
                          200.0 + 100.0 * label, rng)
      video.write_clip(os.path.join(raw_dir, 'VideoFlash', clip + '.flv'),
                       video.synthetic_frames(2.5, 30, 480, 360, rng.integers(64, 256, 3)), 30,
                       codec='flv')
    return {}

  def metadata(self, split: str, frame_size: int) -> dict[str, Any]:
    return {
        'classes': list(CLASSES),
        'modalities': FEATURES,
        'split': split,
        'preprocessing': {
            'audio': 'WAV at 22,050 Hz (scipy resample_poly), tiled 3x and cut to 3 s, clipped '
                     'to [-1, 1], STFT n_fft 512 hop 353 (periodic Hann, centred, reflect pad), '
                     'log(|S| + 1e-7): 257 x 188 (OGM-GE dataset/CramedDataset.py)',
            'frames': f'first frame of each second (OGM-GE data/CREMAD/video_preprocessing.py), '
                      f'RGB uint8 resized to {frame_size} x {frame_size} (PIL bilinear)',
            'split': ('OGM-GE data/CREMAD/train.csv / test.csv (random; all speakers in both)'
                      if split == 'ogm' else
                      'TFDS crema_d speaker-disjoint split (63 / 9 / 19 speakers)'),
        },
    }


def _check_options(split: str, frame_size: int) -> None:
  if split not in SPLITS:
    raise UserError(f'prepare {NAME}: split={split!r} is not a split; valid splits are '
                    f'{list(SPLITS)}.')
  if frame_size < 1:
    raise UserError(f'prepare {NAME}: frame_size={frame_size} must be an integer >= 1.')


def add_channel(x: np.ndarray) -> np.ndarray:
  """A spectrogram ``[F, T]`` as a one-channel image ``[F, T, 1]``."""
  return x[..., None]


def frame_preprocess(frames: np.ndarray, num_frames: int, frame_selection: str,
                     image_size: int) -> np.ndarray:
  """The stored uint8 frames of a clip -> ``num_frames`` resized, ImageNet-normalised frames."""
  return video.resize_normalize(video.select_frames(frames, num_frames, frame_selection),
                                image_size)


def build_audio_visual(name: str, path: str, seed: int, num_frames: int, frame_selection: str,
                       image_size: int, val_fraction: float, worker_count: int,
                       audio_channel: bool = True) -> MultiModalDataset:
  """The audio-visual data set ``name`` of a prepared folder (CREMA-D, AVE, Kinetics-Sounds).

  ``audio``: the stored audio feature (with a channel axis when ``audio_channel``); ``visual``:
  :func:`frame_preprocess`, plus RandomResizedCrop + flip per frame in training. A folder
  without a val split gets a stratified ``val_fraction`` of train, drawn from ``seed``.
  """
  check_int('data.num_frames', num_frames, 1)
  check_choice('data.frame_selection', frame_selection, video.FRAME_SELECTIONS)
  check_int('data.image_size', image_size, 1)
  check_fraction('data.val_fraction', val_fraction)
  check_int('data.worker_count', worker_count, 0)

  def val_from_train(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return stratified_split(labels, val_fraction, derive_seed(seed, 0), key='data.val_fraction')

  preprocess = {'visual': functools.partial(frame_preprocess, num_frames=num_frames,
                                            frame_selection=frame_selection,
                                            image_size=image_size)}
  if audio_channel:
    preprocess['audio'] = add_channel
  return core.prepared_dataset(path, name, FEATURES, preprocess=preprocess,
                               augment={'visual': video.random_resized_crop_flip},
                               worker_count=worker_count, val_from_train=val_from_train)


@register(NAME, options={'path': '', 'num_frames': 1, 'frame_selection': 'first',
                                    'image_size': 224, 'val_fraction': 0.1, 'worker_count': 0})
def build(seed: int, path: str, num_frames: int, frame_selection: str, image_size: int,
          val_fraction: float, worker_count: int) -> MultiModalDataset:
  """CREMA-D prepared by `mmjax prepare crema_d`: audio spectrogram + face frames, 6 emotions."""
  return build_audio_visual(NAME, path, seed, num_frames, frame_selection, image_size,
                            val_fraction, worker_count)
