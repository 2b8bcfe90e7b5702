"""MNIST from the user's IDX files: ``mmjax prepare mnist --raw DIR --out DIR``.

The raw folder holds the four files of LeCun, Cortes and Burges' MNIST distribution
(http://yann.lecun.com/exdb/mnist/, mirrored by e.g. ``torchvision.datasets.MNIST`` under
``MNIST/raw``), gzipped or not: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (with ``.gz``; the spellings
``train-images.idx3-ubyte`` of some mirrors are accepted too). The 60,000 training digits are
the ``train`` split and the 10,000 test digits the ``test`` split, each record the digit's
``image`` (uint8 ``[28, 28, 1]``, the file's bytes unchanged) and its label.

The IDX format (the page above): a big-endian header, the magic number ``0x00000801`` (labels,
one dimension) or ``0x00000803`` (images, three dimensions), the size of each dimension as a
uint32, then the uint8 values in row-major order. A label file that cannot be read is a wrong
raw layout (one line); image bytes that are missing (a truncated or corrupt image file) make
those digits fail, and they are listed in ``failures.txt``.

``cgmnist`` with ``source='prepared'`` and ``path=OUT`` builds Colored-and-gray MNIST from these
records, with the colouring of :mod:`mmjax.data.cgmnist` (Kim et al. 2019 as Wu et al. 2022).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from mmjax.errors import UserError
from mmjax.prepare.core import Example, register_preparer

NAME = 'mnist'
IMAGE_SHAPE = (28, 28)
LABELS_MAGIC, IMAGES_MAGIC = 0x00000801, 0x00000803
#: split -> the IDX files' stem as distributed (``-`` before ``idx``; some mirrors use ``.``).
FILES = {'train': ('train-images', 'train-labels'), 'test': ('t10k-images', 't10k-labels')}
COUNTS = {'train': 60000, 'test': 10000}
"""The digits of the full files; a raw folder with fewer is refused unless ``allow_subset``."""


def find_idx(raw_dir: str, stem: str, dims: int) -> str:
  """The path of the IDX file ``stem`` (``train-images`` ...) in ``raw_dir``, gzipped or not.

  Raises:
    UserError: when none of its spellings is there.
  """
  names = [f'{stem}{sep}idx{dims}-ubyte{gz}' for sep in ('-', '.') for gz in ('.gz', '')]
  for name in names:
    if os.path.isfile(os.path.join(raw_dir, name)):
      return os.path.join(raw_dir, name)
  raise UserError(f'mnist: {raw_dir!r} has no {names[0]} (nor {names[1]}): --raw must be the '
                  'folder of the four MNIST IDX files (train-images-idx3-ubyte, '
                  'train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, '
                  'gzipped or not).')


def read_idx_bytes(path: str) -> bytes:
  """The bytes of an IDX file, decompressed when its name ends with ``.gz``."""
  with open(path, 'rb') as f:
    data = f.read()
  return gzip.decompress(data) if path.endswith('.gz') else data


def idx_header(data: bytes, magic: int, dims: int, path: str) -> tuple[int, ...]:
  """The dimension sizes of IDX ``data`` with ``magic`` (a ValueError naming ``path`` if not)."""
  if len(data) < 4 + 4 * dims:
    raise ValueError(f'{path}: {len(data)} bytes, too short for an IDX header')
  found = int.from_bytes(data[:4], 'big')
  if found != magic:
    raise ValueError(f'{path}: magic number {found:#010x}, expected {magic:#010x}')
  return tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))


@register_preparer(NAME, options={'allow_subset': False})
class MnistPreparer:
  """MNIST's 60,000 train and 10,000 test digits from the four IDX files (gzipped or not)."""

  def __init__(self):
    self._images: dict[str, bytes | Exception] = {}

  def list_examples(self, raw_dir: str, allow_subset: bool) -> list[Example]:
    """One example per label in the label files; the image files are read by :meth:`decode`."""
    examples = []
    for split, (images_stem, labels_stem) in FILES.items():
      images = find_idx(raw_dir, images_stem, 3)
      labels_path = find_idx(raw_dir, labels_stem, 1)
      try:
        data = read_idx_bytes(labels_path)
        (count,) = idx_header(data, LABELS_MAGIC, 1, labels_path)
        if len(data) != 8 + count:
          raise ValueError(f'{labels_path}: {len(data) - 8} labels after a header that says '
                           f'{count}')
      except (OSError, EOFError, ValueError, gzip.BadGzipFile) as e:
        raise UserError(f'mnist: the label file cannot be read ({e}); download it again.') from e
      if count != COUNTS[split] and not allow_subset:
        raise UserError(f'mnist: {labels_path} holds {count} labels, not the {COUNTS[split]} of '
                        f'the full {split} split; use the full files (or --option '
                        'allow_subset=true).')
      labels = np.frombuffer(data, np.uint8, offset=8)
      if labels.max(initial=0) > 9:
        raise UserError(f'mnist: {labels_path} holds the label {labels.max()}; MNIST labels are '
                        '0-9. Is it the right file?')
      examples += [Example(f'{split}/{i:05d}', split, int(y), (images, labels_path),
                           {'index': i}) for i, y in enumerate(labels)]
    return examples

  def decode(self, example: Example, allow_subset: bool) -> dict[str, np.ndarray]:
    """The digit's 28x28 bytes from the image file, uint8 ``[28, 28, 1]``."""
    del allow_subset
    path = example.files[0]
    if path not in self._images:  # one read per file and process, not one per digit
      self._images = {path: self._read_images(path)}
    data, size = self._images[path], IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if isinstance(data, Exception):
      raise data
    start = 16 + example.extra['index'] * size
    if start + size > len(data):
      raise ValueError(f'{path} ends at byte {len(data)}; digit {example.extra["index"]} needs '
                       f'bytes {start}-{start + size} (the file is truncated)')
    return {'image': np.frombuffer(data, np.uint8, size, start).reshape(*IMAGE_SHAPE, 1)}

  @staticmethod
  def _read_images(path: str) -> bytes | Exception:
    """The image file's bytes after a checked header, or the error that reading it raised."""
    try:
      data = read_idx_bytes(path)
      rows, cols = idx_header(data, IMAGES_MAGIC, 3, path)[1:]
      if (rows, cols) != IMAGE_SHAPE:
        raise ValueError(f'{path}: images of {rows}x{cols} pixels, MNIST has 28x28')
      return data
    except (OSError, EOFError, ValueError) as error:
      return error

  #: The config file (and its arguments) that trains on this preparer's output.
  config = 'configs/cgmnist.py:source=prepared'

  @staticmethod
  def synthetic_raw(raw_dir: str, examples: int, seed: int = 0) -> dict:
    """Writes MNIST-sized IDX files of ``examples`` random digits per split (gzipped, as
    distributed) for benchmarks; returns the options to prepare them with."""
    rng = np.random.default_rng(seed)
    os.makedirs(raw_dir, exist_ok=True)
    for images_stem, labels_stem in FILES.values():
      images = rng.integers(0, 256, (examples, *IMAGE_SHAPE), dtype=np.uint8)
      labels = (np.arange(examples) % 10).astype(np.uint8)
      for stem, magic, array in ((images_stem, IMAGES_MAGIC, images),
                                 (labels_stem, LABELS_MAGIC, labels)):
        header = b''.join(int(v).to_bytes(4, 'big') for v in (magic, *array.shape))
        dims = array.ndim
        with open(os.path.join(raw_dir, f'{stem}-idx{dims}-ubyte.gz'), 'wb') as f:
          f.write(gzip.compress(header + array.tobytes()))
    return {'allow_subset': True}

  def metadata(self, allow_subset: bool) -> dict:
    del allow_subset
    return {
        'classes': [str(d) for d in range(10)],
        'modalities': {'gray': 'image'},
        'preprocessing': ('none: the IDX files\' uint8 pixels [28, 28, 1] as stored; cgmnist '
                          'scales them to [0, 1] and colours them (mmjax.data.cgmnist).'),
        'source': 'http://yann.lecun.com/exdb/mnist/ (LeCun, Cortes, Burges)',
    }
