"""Shared fixtures: tiny configs that train in seconds on the CPU."""

import os
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import synthetic  # noqa: E402  pylint: disable=wrong-import-position


def tiny_synthetic_config(method: str = 'vanilla', **arg_kwargs):
  """A synthetic config with few examples and small MLPs: one epoch takes well under a second."""
  arg = ','.join([f'method={method}', 'smoke'] + [f'{k}={v}' for k, v in arg_kwargs.items()])
  config = synthetic.get_config(arg)
  config.data.num_train = 256
  config.data.num_val = 64
  config.data.num_test = 64
  config.batch_size = 32
  config.eval_batch_size = 64
  config.log_every_steps = 4
  config.progress_bar = False
  return config


@pytest.fixture
def tiny_config():
  return tiny_synthetic_config


def restore_latest_state(workdir, config):
  """The latest checkpoint of a run (state on the host, and its JSON extra)."""
  from mmjax import checkpointing, train  # pylint: disable=import-outside-toplevel
  trainer = train.Trainer(config)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'))
  state, extra = ckpt.restore_latest(trainer.init_state())
  ckpt.close()
  return jax.device_get(state), extra
