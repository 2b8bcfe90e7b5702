"""Shared fixtures: tiny configs that train in seconds on the CPU."""

import os
import sys

import jax
import ml_collections
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import synthetic  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(autouse=True, scope='session')
def compilation_cache_in_a_temporary_folder(tmp_path_factory):
  """Runs in the tests (and the processes they start) keep JAX's persistent compilation cache
  in a temporary folder, never in the user's home (``mmjax.compilation_cache``)."""
  os.environ['MMJAX_COMPILATION_CACHE'] = str(tmp_path_factory.mktemp('jax_compilation_cache'))


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



def sgd_synthetic_config(method: str, *, learning_rate: float = 0.1, momentum: float = 0.0,
                         weight_decay: float | None = None, model: str = 'late_fusion',
                         **arg_kwargs):
  """:func:`tiny_synthetic_config` trained with plain SGD (the optimiser of the balancing
  methods' papers), for tests that recompute a step by hand. ``model='mmtm'`` swaps in the MMTM
  network over the same encoders, with no MMTM units (``mmtm_stages=()``)."""
  config = tiny_synthetic_config(method, **arg_kwargs)
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = momentum
  config.optimizer.learning_rate = learning_rate
  if weight_decay is not None:
    config.optimizer.weight_decay = weight_decay
  if model == 'mmtm':
    config.model = ml_collections.ConfigDict({
        'name': 'mmtm', 'encoders': config.model.encoders.to_dict(), 'mmtm_stages': (),
        'mmtm_ratio': 4, 'dtype': 'float32'})
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


def assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch):
  """Runs ``config`` once straight through and once stopped after ``stop_after_epoch`` then
  resumed; asserts identical final states, checkpoint extras and ``metrics.jsonl``.

  Returns the two workdirs ``(full, resumed)``.
  """
  from mmjax import metrics, train  # pylint: disable=import-outside-toplevel
  full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, full)
  train.train_and_evaluate(config, resumed, stop_after_epoch=stop_after_epoch)
  assert max(r['epoch'] for r in metrics.read_metrics(resumed)) == stop_after_epoch
  train.train_and_evaluate(config, resumed)
  assert_same_run(full, resumed, config)
  return full, resumed


def assert_same_run(workdir, other, config):
  """Asserts that two runs of ``config`` end alike: latest state and its JSON extra bit for bit,
  and ``metrics.jsonl`` apart from wall-clock timings."""
  from mmjax import metrics  # pylint: disable=import-outside-toplevel
  state, extra = restore_latest_state(workdir, config)
  other_state, other_extra = restore_latest_state(other, config)
  assert extra == other_extra
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(other_state)):
    np.testing.assert_array_equal(a, b)
  assert (metrics.without_timing(metrics.read_metrics(workdir))
          == metrics.without_timing(metrics.read_metrics(other)))


def poison_training_inputs(monkeypatch, modality):
  """Makes every training batch's ``modality`` input NaN (``monkeypatch.undo()`` ends it)."""
  from mmjax import data  # pylint: disable=import-outside-toplevel
  original_next = data.TrainIterator.__next__

  def poisoned(self):
    batch = original_next(self)
    batch['inputs'][modality] = np.full_like(batch['inputs'][modality], np.nan)
    return batch

  monkeypatch.setattr(data.TrainIterator, '__next__', poisoned)
