"""AVE, the Audio-Visual Event data set (Tian et al., ECCV 2018): 4,143 10-s YouTube clips of 28
event classes, each with one annotated audio-visual event segment.

``mmjax prepare ave --raw AVE_Dataset --out DIR`` reads the release as it unpacks
(github.com/YapengTian/AVE-ECCV18, ``AVE_Dataset.zip``): ``AVE/<video id>.mp4`` (video with AAC
audio) and the split files ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``, lines
``Category&VideoID&Quality&StartTime&EndTime`` (3,339 / 402 / 402 lines; ``Annotations.txt``, their
union with a header line, is not read). The balancing literature trains on the classification
form of AVE with these splits (OGM-GE: 28 classes; PMR's code, the only one of that family that
publishes its AVE preprocessing, fanyunfeng-bit/Modal-Imbalance-PMR ``data/AVE/``), which is what
this preparer stores per clip:

- ``audio``: float32 257 x 1004, :func:`mmjax.prepare.audio.pmr_spectrogram` of the clip's audio
  at 16 kHz; with ``segment='event'`` (default, PMR's ``extractWav_SE`` / ``Audio-1004-SE`` that
  its loader reads) only the annotated seconds ``StartTime..EndTime``, tiled to 10 s;
- ``frames``: uint8 ``[T, S, S, 3]``, the first frame of each second (of the event's seconds,
  ``StartTime..EndTime`` inclusive, with ``segment='event'``; PMR's ``video2frame_update_SE``).

``segment='clip'`` (ours) uses the whole 10-s clip instead.

Labels: the 28 category names sorted (OGM-GE's ``AVDataset`` sorts its class list; PMR numbers
them in order of first appearance in ``testSet.txt``). A video id listed twice in a split file
(27 in ``trainSet.txt``, 1 in ``valSet.txt``, with another event) is kept once, its first line,
as PMR's loader does (OGM-GE's keeps the last).

The data set ``ave`` reads the prepared folder: ``audio`` ``[257, 1004, 1]``, ``visual``
``[num_frames, image_size, image_size, 3]`` (PMR: 4 frames of the event; ``frame_selection``
``'spread'`` spreads them over it), with AVE's own val split.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmjax.data.dataset import MultiModalDataset
from mmjax.data.registry import register
from mmjax.errors import UserError
from mmjax.prepare import audio, core, crema_d, video

NAME = 'ave'
SPLIT_FILES = {'train': 'trainSet.txt', 'val': 'valSet.txt', 'test': 'testSet.txt'}
SEGMENTS = ('event', 'clip')
SAMPLE_RATE = 16000
#: The 28 event categories of AVE's annotation files, sorted (label = index).
CLASSES = ('Accordion', 'Acoustic guitar', 'Baby cry, infant cry', 'Banjo', 'Bark', 'Bus', 'Cat',
           'Chainsaw', 'Church bell', 'Clock', 'Female speech, woman speaking',
           'Fixed-wing aircraft, airplane', 'Flute', 'Frying (food)', 'Goat', 'Helicopter',
           'Horse', 'Male speech, man speaking', 'Mandolin', 'Motorcycle',
           'Race car, auto racing', 'Rodents, rats, mice', 'Shofar', 'Toilet flush',
           'Train horn', 'Truck', 'Ukulele', 'Violin, fiddle')


def read_annotations(path: str) -> list[tuple[str, str, int, int]]:
  """``(category, video id, start second, end second)`` per line of an AVE annotation file (a
  header line ``Category&VideoID&...`` is skipped); a :class:`UserError` names a bad line."""
  rows = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith('Category&'):
        continue
      fields = line.split('&')
      try:
        rows.append((fields[0], fields[1], int(fields[3]), int(fields[4])))
      except (IndexError, ValueError):
        raise UserError(f'prepare {NAME}: {path} line {number} is {line!r}, not '
                        '"Category&VideoID&Quality&StartTime&EndTime".') from None
  return rows


@core.register_preparer(NAME, options={'segment': 'event', 'frame_size': 224})
class Ave:
  """AVE: PMR's 257 x 1004 standardised spectrogram and 1-fps frames of each clip's event."""

  def list_examples(self, raw_dir: str, segment: str, frame_size: int) -> list[core.Example]:
    if segment not in SEGMENTS:
      raise UserError(f'prepare {NAME}: segment={segment!r} is not valid; valid values are '
                      f'{list(SEGMENTS)}.')
    if frame_size < 1:
      raise UserError(f'prepare {NAME}: frame_size={frame_size} must be an integer >= 1.')
    crema_d.check_folders(raw_dir, ('AVE',), NAME)
    for file_name in SPLIT_FILES.values():
      if not os.path.isfile(os.path.join(raw_dir, file_name)):
        raise UserError(f'prepare {NAME}: --raw {raw_dir!r} has no {file_name}; it must hold '
                        'AVE/, trainSet.txt, valSet.txt and testSet.txt as '
                        'AVE_Dataset.zip unpacks (docs/datasets.md).')
    examples = []
    for split, file_name in SPLIT_FILES.items():
      seen = set()
      for category, video_id, start, end in read_annotations(os.path.join(raw_dir, file_name)):
        if video_id in seen:
          continue
        seen.add(video_id)
        if category not in CLASSES:
          raise UserError(f'prepare {NAME}: {file_name} names the category {category!r}, not '
                          f'one of AVE\'s 28: {list(CLASSES)}.')
        examples.append(core.Example(video_id, split, CLASSES.index(category),
                                     (os.path.join(raw_dir, 'AVE', video_id + '.mp4'),),
                                     {'start': start, 'end': end}))
    return examples

  def decode(self, example: core.Example, segment: str, frame_size: int
             ) -> dict[str, np.ndarray]:
    crema_d.check_present(example)
    (path,) = example.files
    samples = audio.load_audio(path, SAMPLE_RATE)
    seconds = None
    if segment == 'event':
      seconds = (example.extra['start'], example.extra['end'])
      samples = samples[SAMPLE_RATE * seconds[0]:SAMPLE_RATE * seconds[1]]
    return {'audio': audio.pmr_spectrogram(samples, SAMPLE_RATE),
            'frames': video.frames_per_second(path, frame_size, seconds=seconds)}

  @staticmethod
  def synthetic_raw(raw_dir: str, examples: int, seed: int = 0) -> dict[str, Any]:
    """Writes AVE's layout for benchmarks (``benchmarks/input_pipeline.py``): ``examples`` train
    clips and ``max(1, examples // 8)`` val and test clips, each a 10-s 640 x 360 24-fps MP4 with
    16-kHz AAC audio and an event of 2-9 s, and the three split files; returns the options to
    prepare them with (the defaults)."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(raw_dir, 'AVE'), exist_ok=True)
    counts = {'train': examples, 'val': max(1, examples // 8), 'test': max(1, examples // 8)}
    for split, count in counts.items():
      lines = []
      for i in range(count):
        video_id = f'{split}{i:05d}'
        label = int(rng.integers(len(CLASSES)))
        start = int(rng.integers(0, 3))
        end = start + int(rng.integers(2, 8))
        lines.append(f'{CLASSES[label]}&{video_id}&good&{start}&{end}')
        video.write_clip(os.path.join(raw_dir, 'AVE', video_id + '.mp4'),
                         video.synthetic_frames(10.0, 24, 640, 360, rng.integers(64, 256, 3)), 24,
                         codec='h264', audio=crema_d.synthetic_tone(10.0, 200.0 + 20 * label, rng),
                         sample_rate=SAMPLE_RATE)
      with open(os.path.join(raw_dir, SPLIT_FILES[split]), 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    return {}

  def metadata(self, segment: str, frame_size: int) -> dict[str, Any]:
    where = 'the annotated event seconds' if segment == 'event' else 'the whole clip'
    return {
        'classes': list(CLASSES),
        'modalities': crema_d.FEATURES,
        'segment': segment,
        'preprocessing': {
            'audio': f'{where} at 16 kHz (scipy resample_poly), tiled and cut to 10 s, clipped, '
                     'scipy.signal.spectrogram(nperseg=512, noverlap=353), log(S + 1e-7), per-clip '
                     'standardisation: 257 x 1004 (PMR data/AVE/video_preprocessing.py)',
            'frames': f'first frame of each second of {where} (PMR video2frame_update_SE), RGB '
                      f'uint8 resized to {frame_size} x {frame_size} (PIL bilinear)',
            'split': 'AVE trainSet.txt / valSet.txt / testSet.txt; a repeated video id keeps its '
                     'first line (PMR)',
        },
    }


@register(NAME, options={'path': '', 'num_frames': 4, 'frame_selection': 'spread',
                                    'image_size': 224, 'val_fraction': 0.1, 'worker_count': 0})
def build(seed: int, path: str, num_frames: int, frame_selection: str, image_size: int,
          val_fraction: float, worker_count: int) -> MultiModalDataset:
  """AVE prepared by `mmjax prepare ave`: audio spectrogram + frames, 28 event classes."""
  return crema_d.build_audio_visual(NAME, path, seed, num_frames, frame_selection, image_size,
                                    val_fraction, worker_count)
