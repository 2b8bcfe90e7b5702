"""Video frames: 1-fps extraction at prepare time, frame choice and the literature's image
transforms at read time (in Grain workers).

Extraction (:func:`frames_per_second`) is OGM-GE's ``videoReader.video2frame_update`` with
``frame_kept_per_second=1`` (GeWu-Lab/OGM-GE_CVPR2022 ``data/CREMAD/video_preprocessing.py``,
the script every CREMA-D/AVE/VGGSound loader of that code family reads the frames of): decode every
frame in order and keep frame ``i`` when ``i % int(fps) == 0``, i.e. the first frame of each
second (``int`` truncates 29.97 fps to 29, as OpenCV's ``CAP_PROP_FPS`` there). PyAV (FFmpeg)
decodes instead of OpenCV (also FFmpeg). The kept frames are stored as uint8 RGB, resized to
``size x size`` with PIL's bilinear filter: the literature's test transform is
``Resize((224, 224))`` of the whole frame, so storing 224 x 224 makes it exact and keeps a
CREMA-D clip's 2-3 frames at 150 KB each (ours: the training crop is then drawn from the
squashed frame, not the original 480 x 360 one; RandomResizedCrop's scale and ratio ranges are
relative, so this changes only the crop's aspect ratio by the frame's own 4:3).

Read time, per example (:func:`select_frames`, :func:`resize_normalize` in every split,
:func:`random_resized_crop_flip` in training only):

- the frames: ``'first'`` takes the first ``num_frames`` in time order (OGM-GE's CREMA-D loader
  means to draw random frames, then reads the first ``fps`` files of an unsorted ``os.listdir``
  whatever it drew; with the default 1 frame per clip that is one frame of the clip, we make it
  the first); ``'spread'`` takes frames ``seg * i`` with ``seg = n // num_frames`` (OGM-GE's
  Kinetics-Sounds/AVE ``AVDataset``, ``t = seg * i + 1`` over 1-based file names); a clip with
  fewer frames than asked repeats them cyclically (ours; the reference code pads with random
  extra frames at extraction);
- test: ``Resize((image_size, image_size))`` + ImageNet mean/std;
- train: torchvision's ``RandomResizedCrop(image_size)`` (scale 0.08-1, ratio 3/4-4/3, ten tries
  then a centre crop) + ``RandomHorizontalFlip()``, drawn independently for every frame as the
  reference loaders call the transform per image, on the normalised frame (normalisation is a
  per-channel affine map, which commutes with bilinear resampling and flips).
"""

from __future__ import annotations

import fractions
import itertools
import math
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
FRAME_SELECTIONS = ('first', 'spread')


def frames_per_second(path: str, size: int, *, seconds: tuple[int, int] | None = None
                      ) -> np.ndarray:
  """The first frame of each second of ``path``'s first video stream, resized.

  Args:
    path: a video file any FFmpeg demuxer reads (``.flv``, ``.mp4``, ...).
    size: the stored frames are ``size x size`` (PIL bilinear).
    seconds: ``(start, end)``: keep only the kept frames of seconds ``start..end`` inclusive (PMR's
      AVE event segments, ``video2frame_update_SE``); None keeps all.

  Returns:
    uint8 ``[T, size, size, 3]``, T >= 1.

  Raises:
    ValueError: no video stream, an unknown frame rate, or no frame kept; PyAV's errors for
      unreadable files.
  """
  # PyAV loads FFmpeg (about 30 ms): imported on first use, not at every `import mmjax`.
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path) as container:
    if not container.streams.video:
      raise ValueError(f'{path}: no video stream.')
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    if not rate or int(rate) < 1:
      raise ValueError(f'{path}: the video stream has no usable frame rate ({rate}).')
    fps = int(rate)
    kept = []
    for index, frame in enumerate(container.decode(stream)):
      if index % fps:
        continue
      second = index // fps
      if seconds is not None and not seconds[0] <= second <= seconds[1]:
        continue
      image = frame.to_image()
      kept.append(np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.uint8))
  if not kept:
    raise ValueError(f'{path}: no frame decoded' + ('' if seconds is None else
                                                     f' in seconds {seconds[0]}..{seconds[1]}')
                     + '.')
  return np.stack(kept)


def select_frames(frames: np.ndarray, num_frames: int, selection: str) -> np.ndarray:
  """``num_frames`` of ``frames`` ``[T, ...]`` (``'first'`` or ``'spread'``, see the module doc)."""
  count = len(frames)
  if selection == 'first':
    index = np.arange(num_frames)
  elif selection == 'spread':
    index = (count // num_frames) * np.arange(num_frames)
  else:
    raise ValueError(f'frame_selection must be one of {list(FRAME_SELECTIONS)}, got {selection!r}.')
  return frames[index % count]


def _resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """A float ``[h, w, C]`` image resized to ``[height, width, C]``, PIL bilinear per channel."""
  if image.shape[:2] == (height, width):
    return image.astype(np.float32)
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32),
                                              mode='F').resize((width, height), Image.BILINEAR))
                   for c in range(image.shape[-1])], axis=-1)


def resize_normalize(frames: np.ndarray, image_size: int) -> np.ndarray:
  """uint8 ``[T, h, w, 3]`` -> float32 ``[T, image_size, image_size, 3]``: ``Resize`` then
  ``ToTensor`` (``/ 255``) and ``Normalize`` with the ImageNet mean and standard deviation."""
  scaled = (np.asarray(frames, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  return np.stack([_resize_float(f, image_size, image_size) for f in scaled])


def crop_box(height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0),
             ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's ``RandomResizedCrop.get_params``: ``(top, left, crop height, crop width)``."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    h, w = height, int(round(height * ratio[1]))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_flip(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """``RandomResizedCrop(S)`` + ``RandomHorizontalFlip()`` of each frame of ``[T, S, S, C]``,
  each frame its own crop and flip (``S`` stays the frames' size)."""
  out = []
  for frame in frames:
    height, width = frame.shape[:2]
    top, left, h, w = crop_box(height, width, rng)
    crop = _resize_float(frame[top:top + h, left:left + w], height, width)
    out.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
  return np.stack(out)


def write_clip(path: str, frames: Iterable[np.ndarray], fps: int | fractions.Fraction, *,
               codec: str, audio: np.ndarray | None = None, sample_rate: int = 0) -> None:
  """Writes uint8 RGB frames ``[H, W, 3]`` (and mono float audio in [-1, 1] at ``sample_rate``,
  AAC) as a video file with PyAV: the clips, in a data set's real container, that the tests and
  ``synthetic_raw`` (benchmarks) make."""
  frames = iter(frames)
  first = next(frames)
  # PyAV loads FFmpeg (about 30 ms): imported on first use, not at every `import mmjax`.
  import av  # pylint: disable=import-outside-toplevel
  with av.open(path, 'w') as container:
    stream = container.add_stream(codec, rate=fps)
    stream.height, stream.width = first.shape[:2]
    stream.pix_fmt = 'yuv420p'
    audio_stream = (container.add_stream('aac', rate=sample_rate, layout='mono')
                    if audio is not None else None)
    for image in itertools.chain([first], frames):
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image),
                                                             format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
    if audio_stream is not None:
      samples = np.asarray(audio, np.float32)
      for start in range(0, len(samples), 1024):
        chunk = av.AudioFrame.from_ndarray(samples[None, start:start + 1024], format='fltp',
                                           layout='mono')
        chunk.sample_rate = sample_rate
        for packet in audio_stream.encode(chunk):
          container.mux(packet)
      for packet in audio_stream.encode():
        container.mux(packet)


def synthetic_frames(seconds: float, fps: int, width: int, height: int, colour: np.ndarray
                     ) -> Iterator[np.ndarray]:
  """A clip's frames for benchmarks: a gradient of ``colour`` drifting sideways (it compresses
  and decodes as camera video does, unlike noise)."""
  x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
  y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
  for i in range(int(round(seconds * fps))):
    shade = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y + i / (2.0 * fps)))
    yield (shade * np.asarray(colour, np.float32)).astype(np.uint8)
