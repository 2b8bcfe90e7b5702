"""One process of tests/test_multihost.py: trains the tiny synthetic config in a workdir.

    python tests/multihost_worker.py WORKDIR STOP_AFTER_EPOCH [COORDINATOR PROCESS_ID]

With a coordinator address the process is one of two (``config.distributed``); without, it is
the only one. ``JAX_NUM_CPU_DEVICES`` and ``JAX_CPU_COLLECTIVES_IMPLEMENTATION`` come from the
environment. Writes ``WORKDIR_reads_<process>_<stop>.json``: the example indices of
every batch this process read from the training split (``Split.batch``), and its devices.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402  pylint: disable=wrong-import-position
import numpy as np  # noqa: E402  pylint: disable=wrong-import-position

from mmjax import train  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.data import dataset  # noqa: E402  pylint: disable=wrong-import-position
from conftest import tiny_synthetic_config  # noqa: E402  pylint: disable=wrong-import-position


def multihost_config(coordinator: str | None = None, process_id: int = -1):
  """The tiny synthetic run of the test: 2 epochs of 8 steps, a checkpoint every 3 steps."""
  config = tiny_synthetic_config('vanilla')
  config.num_epochs = 2
  config.checkpoint_every_steps = 3
  if coordinator:
    config.distributed.enabled = True
    config.distributed.coordinator_address = coordinator
    config.distributed.num_processes = 2
    config.distributed.process_id = process_id
  return config


def main(argv):
  workdir, stop = argv[1], int(argv[2])
  coordinator, process_id = (argv[3], int(argv[4])) if len(argv) > 3 else (None, -1)
  config = multihost_config(coordinator, process_id)
  reads = []
  original_batch = dataset.Split.batch

  def recording_batch(split, indices, rngs=None):
    if len(split) == config.data.num_train:
      reads.append(np.asarray(indices).tolist())
    return original_batch(split, indices, rngs)

  dataset.Split.batch = recording_batch
  train.train_and_evaluate(config, workdir, stop_after_epoch=stop or None)
  path = f'{workdir}_reads_{jax.process_index()}_{stop}.json'
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'process_count': jax.process_count(), 'devices': jax.device_count(),
               'local_devices': jax.local_device_count(), 'train_reads': reads}, f)


if __name__ == '__main__':
  main(sys.argv)
