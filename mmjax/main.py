"""Command-line entry point.

    python -m mmjax.main --config configs/cgmnist.py:method=vanilla --workdir /tmp/run

``--config`` takes a config file with ``get_config(arg)``, the text after ``:`` as its
argument, and ``--config.key=value`` overrides; ``--workdir`` holds everything the run writes.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from mmjax import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and config.json.')
config_flags.DEFINE_config_file('config', None, 'A config file: configs/NAME.py[:ARGS].',
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected command-line arguments: {argv[1:]}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if FLAGS.config.distributed:
    train.initialize_distributed()
  logging.warning('JAX process %d of %d, devices: %s', jax.process_index(), jax.process_count(),
                  jax.devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
