"""Examples per second of a record source read through Grain, in-process and in worker processes.

    python benchmarks/record_pipeline.py [--records 4096] [--batch 64] [--batches 200] [--workers 0,2]

Writes an ArrayRecord data set (TFDS format, made here: ``--records`` examples of a 32x32x3
uint8 image and a 64-float vector) to a temporary folder, reads it with ``tfds.data_source``
through ``mmjax.data.from_records`` with a tiny preprocessing function per modality (scale to
[0, 1], standardise) and a train-time augmentation of the image (random flip), and times
``--batches`` training batches of ``mmjax.data.TrainIterator`` per worker count. Prints the time
to the first batch (worker start-up included) and the steady examples per second after it.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import tensorflow_datasets as tfds

import timing  # also puts the repository root on sys.path

from mmjax import data  # noqa: E402  pylint: disable=wrong-import-position


def write_records(data_dir: str, num_records: int) -> None:
  """A synthetic two-modality ArrayRecord data set, ``bench_records``, in ``data_dir``.

  (Defined in a function: Grain's workers import this script again, and TFDS refuses a second
  class of the same name.)
  """

  class BenchRecords(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
          'vector': tfds.features.Tensor(shape=(64,), dtype=np.float32),
          'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):  # pylint: disable=arguments-differ
      rng = np.random.default_rng(0)
      for i in range(num_records):
        yield i, {'image': rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                  'vector': rng.normal(size=64).astype(np.float32), 'label': i % 10}

  BenchRecords(data_dir=data_dir, file_format='array_record').download_and_prepare()


def scale_image(x):
  return x / 255.0


def standardise(x):
  return (x - x.mean()) / (x.std() + 1e-6)


def random_flip(x, rng):
  return x[:, ::-1] if rng.random() < 0.5 else x


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--records', type=int, default=4096)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--workers', default='0,2')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as data_dir:
    write_records(data_dir, args.records)
    source = tfds.data_source('bench_records', split='train', data_dir=data_dir)
    labels = np.arange(args.records) % 10  # given, so that no pass reads every record first
    dataset = data.from_records(
        {'train': source, 'val': source, 'test': source}, {'image': 'image', 'vector': 'vector'},
        preprocess={'image': scale_image, 'vector': standardise},
        augment={'image': random_flip}, labels={s: labels for s in ('train', 'val', 'test')})
    print(f"{'workers':>8}{'batch':>7}{'batches':>9}{'first batch s':>15}{'examples/s':>12}")
    for workers in [int(w) for w in args.workers.split(',')]:
      first, rate = timing.time_train_iterator(dataset.splits['train'], args.batch, workers,
                                               args.batches)
      print(f'{workers:>8}{args.batch:>7}{args.batches:>9}{first:>15.2f}{rate:>12.0f}')


if __name__ == '__main__':
  main()
