"""ModelNet40 multi-view: two rendered views of each CAD model as two modalities (Wu et al. 2022).

Raw files: the MVCNN 12-view shaded renders of ModelNet40 (Su et al., "Multi-view Convolutional
Neural Networks for 3D Shape Recognition", ICCV 2015; the 12x set of their 2018 code
``jongchyisu/mvcnn_pytorch``, ``modelnet40_images_new_12x``), which Wu et al.'s code reads
(``nyukat/greedy_multimodal_learning``, ``src/dataset.py``). The layout::

    RAW/<class>/<train|test>/<class>_<NNNN>.obj.shaded_v<VVV>.png     VVV = 001 ... 012

(the older MVCNN naming ``<class>_<NNNN>_<VVV>.png`` is read too). 40 classes, 9,843 train and
2,468 test models. View ``v`` (0-11) is file ``VVV = v + 1``: Wu et al. take the ``v``-th of a
model's 12 files sorted by name, the same file.

``mmjax prepare modelnet40 --raw RAW --out OUT [--option views=0,6]`` stores, per model, the
chosen views (Wu et al.: ``specific_views=[0, 6]``, a front and a rear view) as uint8
``[H, W, 3]`` images under the keys ``view_<v>``: each PNG opened with PIL and converted to
RGB, as Wu et al.'s ``load_modelviews``; no resize (Wu et al. feed the renders at their stored
size, 224x224 in the 12x set). ``--option image_size=S`` (ours, not the papers') resizes to
``S x S`` (PIL bilinear) to save disk and time. A model lacking a chosen view, or a PNG that
cannot be decoded, is reported in ``failures.txt``.

The data set ``modelnet40`` (``config.data.path = OUT``) reads two of the stored views as the
modalities ``view_a`` and ``view_b`` (``data.views``, default ``(0, 6)``), with Wu et al.'s
preprocessing in Grain's workers: pixels / 255, then ImageNet normalisation (mean
``(0.485, 0.456, 0.406)``, std ``(0.229, 0.224, 0.225)``), and in training a random horizontal
flip of each view (probability 0.5, torchvision's ``RandomHorizontalFlip``). Val is carved out of
train as in Wu et al.'s ``get_mvdcndata``: the train models' indices (classes in :data:`CLASSES`
order, models sorted by name) are shuffled by ``random.Random(val_seed=10)`` and the first
``floor(val_fraction * N)`` (``val_fraction = 0.2``) are val; the run's seed does not move it.
"""

from __future__ import annotations

import math
import os
import random
import re
from typing import Any

import numpy as np

from mmjax.data.dataset import MultiModalDataset, check_fraction, check_int
from mmjax.data.registry import register
from mmjax.errors import UserError
from mmjax.prepare.core import Example, prepared_dataset, register_preparer

NAME = 'modelnet40'
CLASSES = ('airplane', 'bathtub', 'bed', 'bench', 'bookshelf', 'bottle', 'bowl', 'car', 'chair',
           'cone', 'cup', 'curtain', 'desk', 'door', 'dresser', 'flower_pot', 'glass_box',
           'guitar', 'keyboard', 'lamp', 'laptop', 'mantel', 'monitor', 'night_stand', 'person',
           'piano', 'plant', 'radio', 'range_hood', 'sink', 'sofa', 'stairs', 'stool', 'table',
           'tent', 'toilet', 'tv_stand', 'vase', 'wardrobe', 'xbox')
"""The 40 classes, in the order of Wu et al.'s ``classnames`` (the labels 0-39)."""
NUM_VIEWS = 12
MODALITIES = ('view_a', 'view_b')
RAW_SPLITS = ('train', 'test')
RENDER = re.compile(r'^(?P<model>.+?)(?:\.obj\.shaded_v|_)(?P<view>\d{3})\.png$')
"""A render's file name: the model's name and the view number VVV (1-12)."""
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
LAYOUT = '<class>/<train|test>/<class>_<NNNN>.obj.shaded_v<VVV>.png'


def view_key(view: int) -> str:
  """The record key of rendered view ``view`` (0-11)."""
  return f'view_{view}'


def _check_views(views: Any, *, at_least: int, option: str) -> tuple[int, ...]:
  views = tuple(views) if isinstance(views, (tuple, list)) else (views,)
  if (len(views) < at_least or len(set(views)) != len(views)
      or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < NUM_VIEWS
                 for v in views)):
    raise UserError(f'modelnet40: {option}={views!r} must be {at_least} or more distinct view '
                    f'numbers in 0-{NUM_VIEWS - 1} (Wu et al.: 0,6).')
  return views


@register_preparer(NAME, options={'views': (0, 6), 'image_size': 0})
class ModelNet40Preparer:
  """ModelNet40's MVCNN 12-view renders: the chosen views of each of the 12,311 models."""

  def list_examples(self, raw_dir: str, views: tuple[int, ...], image_size: int
                    ) -> list[Example]:
    """One example per model (classes in :data:`CLASSES` order, models sorted by name)."""
    views = _check_views(views, at_least=2, option='--option views')
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 0:
      raise UserError(f'modelnet40: --option image_size={image_size!r} must be 0 (keep the '
                      'renders\' size) or a size in pixels.')
    examples = []
    for label, name in enumerate(CLASSES):
      for split in RAW_SPLITS:
        folder = os.path.join(raw_dir, name, split)
        if not os.path.isdir(folder):
          raise UserError(f'modelnet40: expected the folder {folder}: --raw must hold the MVCNN '
                          f'12-view renders as {LAYOUT} for all 40 classes.')
        renders: dict[str, dict[int, str]] = {}
        for file_name in os.listdir(folder):
          match = RENDER.match(file_name)
          if match:
            renders.setdefault(match['model'], {})[int(match['view']) - 1] = file_name
        for model in sorted(renders):
          files = tuple(os.path.join(folder, renders[model].get(
              v, f'{model}.obj.shaded_v{v + 1:03d}.png')) for v in views)
          examples.append(Example(f'{split}/{model}', split, label, files, {'views': views}))
    return examples

  def decode(self, example: Example, views: tuple[int, ...], image_size: int
             ) -> dict[str, np.ndarray]:
    """The chosen views as uint8 RGB ``[H, W, 3]`` (resized to ``image_size`` if it is > 0)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    features = {}
    for view, path in zip(views, example.files):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'view {view} of this model is missing ({os.path.basename(path)})')
      with Image.open(path) as image:
        image = image.convert('RGB')
        if image_size:
          image = image.resize((image_size, image_size), Image.BILINEAR)
        features[view_key(view)] = np.asarray(image, dtype=np.uint8)
    shapes = {a.shape for a in features.values()}
    if len(shapes) != 1:
      raise ValueError(f'the views have different sizes {sorted(shapes)}')
    return features

  #: The config file that trains on this preparer's output.
  config = 'configs/modelnet40.py'

  @staticmethod
  def synthetic_raw(raw_dir: str, examples: int, seed: int = 0, size: int = 224) -> dict:
    """Writes renders in the MVCNN layout for benchmarks: about ``examples`` train and
    ``examples // 4`` test models over the 40 classes, 12 views each, ``size`` x ``size`` PNGs
    like the real ones (a shaded blob on white, so they compress as renders do); returns the
    options to prepare them with (the defaults)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    per_class = {'train': max(1, examples // len(CLASSES)),
                 'test': max(1, examples // (4 * len(CLASSES)))}
    for label, name in enumerate(CLASSES):
      for split, count in per_class.items():
        folder = os.path.join(raw_dir, name, split)
        os.makedirs(folder, exist_ok=True)
        for model in range(1, count + 1):
          for view in range(NUM_VIEWS):
            a, b = rng.uniform(0.15, 0.4, 2)
            inside = (x / a) ** 2 + (y / b) ** 2 < 1
            shade = 255 - (120 * inside * (1 + np.cos(7 * x + label + view)) / 2).astype(np.uint8)
            image = np.repeat(shade[..., None], 3, axis=-1).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(
                folder, f'{name}_{model:04d}.obj.shaded_v{view + 1:03d}.png'))
    return {}

  def metadata(self, views: tuple[int, ...], image_size: int) -> dict:
    return {
        'classes': list(CLASSES),
        'views': {view_key(v): v for v in views},
        'preprocessing': (
            'each chosen view of each model: the PNG opened with PIL and converted to RGB, uint8 '
            '[H, W, 3] (Wu et al. 2022, nyukat/greedy_multimodal_learning src/dataset.py '
            'load_modelviews); ' + (f'resized to {image_size}x{image_size} (PIL bilinear; ours).'
                                    if image_size else 'at the renders\' own size.')),
        'source': ('MVCNN 12-view shaded renders (Su et al. ICCV 2015; modelnet40_images_new_12x '
                   'of jongchyisu/mvcnn_pytorch)'),
    }


def normalize_imagenet(x: np.ndarray) -> np.ndarray:
  """uint8 ``[H, W, 3]`` -> float32 ``(x / 255 - mean) / std`` with ImageNet's mean and std
  (torchvision ``ToTensor`` then ``Normalize``, Wu et al.'s ``get_mvdcndata``)."""
  return (x.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD


def random_horizontal_flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """``x`` ``[H, W, C]`` mirrored left-right with probability 0.5 (``RandomHorizontalFlip``)."""
  return x[:, ::-1] if rng.random() < 0.5 else x


def wu_validation_split(num_train: int, val_fraction: float, val_seed: int
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Wu et al.'s train/val split of ``num_train`` train models (``get_mvdcndata``):
  ``random.Random(val_seed).shuffle(list(range(num_train)))``, the first
  ``floor(val_fraction * num_train)`` shuffled indices are val, the rest train."""
  indices = list(range(num_train))
  random.Random(val_seed).shuffle(indices)
  cut = int(math.floor(val_fraction * num_train))
  return np.array(indices[cut:], np.int64), np.array(indices[:cut], np.int64)


@register(NAME, options={'path': '', 'views': (0, 6), 'val_fraction': 0.2, 'val_seed': 10,
                         'worker_count': 0})
def build(seed: int, path: str, views: tuple[int, ...], val_fraction: float, val_seed: int,
          worker_count: int) -> MultiModalDataset:
  """ModelNet40 multi-view (Wu et al. 2022): two MVCNN views, from `mmjax prepare modelnet40`.

  Args:
    seed: not used: the val split is Wu et al.'s, fixed by ``val_seed``.
    path: the folder ``mmjax prepare modelnet40`` wrote.
    views: the two rendered views (0-11) that are the modalities ``view_a`` and ``view_b``;
      both must have been prepared (``--option views=...``).
    val_fraction: the share of train held out as val, in (0, 1).
    val_seed: seeds the shuffle that picks val (Wu et al.: 10).
    worker_count: Grain worker processes that read, normalise and flip the images.
  """
  del seed
  views = _check_views(views, at_least=2, option='data.views')
  if len(views) != 2:
    raise UserError(f'data.views={views!r} must name exactly two views (the modalities '
                    f'{MODALITIES}).')
  check_fraction('val_fraction', val_fraction)
  val_seed = check_int('val_seed', val_seed, 0)
  return prepared_dataset(
      path, NAME, {m: view_key(v) for m, v in zip(MODALITIES, views)},
      num_classes=len(CLASSES),
      preprocess={m: normalize_imagenet for m in MODALITIES},
      augment={m: random_horizontal_flip for m in MODALITIES},
      worker_count=check_int('worker_count', worker_count, 0),
      val_from_train=lambda labels: wu_validation_split(len(labels), val_fraction, val_seed))
