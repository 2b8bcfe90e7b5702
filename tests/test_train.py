"""End-to-end training runs: run directory, resume, refusals, NaN stop, compile counts."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ROOT, assert_resume_is_bit_identical, poison_training_inputs,
                      restore_latest_state, tiny_synthetic_config)
from mmjax import checkpointing, metrics, train


def _read_tensorboard_scalars(workdir):
  tags = {}
  for tag, step, value in metrics.read_tensorboard_scalars(workdir):
    tags.setdefault(tag, []).append((step, value))
  return tags


@pytest.mark.parametrize('method', ['vanilla', 'uniform'])
def test_run_directory_contract(tmp_path, method, capsys):
  config = tiny_synthetic_config(method)
  workdir = str(tmp_path / 'run')
  summary = train.train_and_evaluate(config, workdir)
  heads = ('fused', 'a', 'b')
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['method']['name'] == method
  records = metrics.read_metrics(workdir)
  for split in ('train', 'val', 'test'):
    split_records = metrics.select(records, split)
    assert [r['epoch'] for r in split_records] == [1, 2]
    for r in split_records:
      for h in heads:
        assert 0.0 <= r[f'accuracy/{h}'] <= 1.0 and np.isfinite(r[f'loss/{h}'])
  train_records = metrics.select(records, 'train')
  assert train_records[-1][f'{method}/weight/fused'] == 1.0
  tags = _read_tensorboard_scalars(workdir)
  last_val = metrics.select(records, 'val')[-1]
  assert tags['val/accuracy/a'][-1] == (last_val['step'], pytest.approx(last_val['accuracy/a']))
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  assert steps and steps[-1] == last_val['step']
  assert summary['best_epoch'] in (1, 2) and set(summary['test_at_best']) == set(heads)
  out = capsys.readouterr().out
  assert 'best val acc' in out and workdir in out


def test_vanilla_learns_synthetic(tmp_path):
  config = tiny_synthetic_config('vanilla')
  config.num_epochs = 6
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['best_val']['fused'] > 0.6  # 4 classes: chance is 0.25


def test_resume_is_bit_identical(tmp_path):
  config = tiny_synthetic_config('uniform')
  config.num_epochs = 4
  assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=2)


def test_rerun_finished_run_is_a_no_op(tmp_path):
  config = tiny_synthetic_config('vanilla')
  workdir = str(tmp_path)
  first = train.train_and_evaluate(config, workdir)
  n_records = len(metrics.read_metrics(workdir))
  assert train.train_and_evaluate(config, workdir) == first
  assert len(metrics.read_metrics(workdir)) == n_records


def test_different_config_is_refused(tmp_path):
  config = tiny_synthetic_config('vanilla')
  train.train_and_evaluate(config, str(tmp_path), stop_after_epoch=1)
  other = tiny_synthetic_config('vanilla')
  other.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r'(?s)different config.*optimizer.learning_rate: 0.001 -> 0.5'):
    train.train_and_evaluate(other, str(tmp_path))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='is not a writable directory'):
    train.train_and_evaluate(tiny_synthetic_config(), str(blocker / 'run'))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
  config = tiny_synthetic_config('uniform')
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, stop_after_epoch=1)
  records_before = metrics.read_metrics(workdir)
  steps_per_epoch = config.data.num_train // config.batch_size

  poison_training_inputs(monkeypatch, 'b')
  with pytest.raises(FloatingPointError,
                     match=rf'non-finite .*loss/b.* at step {steps_per_epoch} .*step {steps_per_epoch}\)'):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert metrics.read_metrics(workdir) == records_before
  state, extra = restore_latest_state(workdir, config)
  assert int(state.step) == steps_per_epoch and extra['epoch'] == 1
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_weight_change_never_recompiles():
  trainer = train.Trainer(tiny_synthetic_config('fixed'))
  state = trainer.init_state()
  batch = trainer.next_batch()
  for weights in ({'fused': 1.0, 'a': 1.0, 'b': 1.0}, {'fused': 0.2, 'a': 0.0, 'b': 3.0},
                  {'fused': 0.0, 'a': 0.5, 'b': 0.0}):
    method_state = dict(state.method_state)
    method_state['weights'] = {h: jnp.float32(w) for h, w in weights.items()}
    state, step_metrics = trainer.jit_train_step(state.replace(method_state=method_state), batch)
    expected = sum(w * float(step_metrics[f'loss/{h}']) for h, w in weights.items())
    assert float(step_metrics['objective']) == pytest.approx(expected, rel=1e-5)
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_batch_shape_mismatch_is_named():
  trainer = train.Trainer(tiny_synthetic_config())
  batch = next(trainer.train_iterator)
  batch['inputs']['a'] = batch['inputs']['a'][:, :3]
  with pytest.raises(ValueError, match=r"batch modality 'a' has per-example shape \(3,\)"):
    trainer.shard(batch)
  batch = next(trainer.train_iterator)
  del batch['inputs']['b']
  with pytest.raises(ValueError, match=r"batch has no modality 'b'; the model takes \['a', 'b'\]"):
    trainer.shard(batch)


@pytest.mark.parametrize('change, match', [
    (lambda c: setattr(c.data, 'name', 'imagenet'), "imagenet"),
    (lambda c: c.model.encoders['a'].update(name='vit'), "vit"),
    (lambda c: setattr(c, 'batch_size', 0), 'batch_size = 0'),
])
def test_bad_config_errors(change, match):
  config = tiny_synthetic_config()
  change(config)
  with pytest.raises(ValueError, match=match):
    train.Trainer(config)


def test_unimodal_builds_one_modality(tmp_path):
  config = tiny_synthetic_config('unimodal', modality='b')
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert set(summary['best_val']) == {'fused', 'b'} and summary['selection_head'] == 'b'


def test_main_cli(tmp_path):
  workdir = str(tmp_path / 'cli')
  cmd = [sys.executable, '-m', 'mmjax.main', '--config', 'configs/synthetic.py:method=uniform,smoke',
         '--workdir', workdir, '--config.data.num_train=128', '--config.progress_bar=False']
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'best val acc' in out.stdout
  assert json.load(open(os.path.join(workdir, 'config.json'), encoding='utf-8'))['data']['num_train'] == 128


_MULTI_DEVICE_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import jax
from conftest import tiny_synthetic_config
from mmjax import train, metrics
config = tiny_synthetic_config('uniform')
train.train_and_evaluate(config, sys.argv[1])
print(json.dumps({{'devices': jax.device_count(), 'records': metrics.read_metrics(sys.argv[1])}}))
"""


def test_eight_host_devices_match_one(tmp_path):
  script = _MULTI_DEVICE_SCRIPT.format(root=ROOT, tests=os.path.join(ROOT, 'tests'))
  results = {}
  for n in (1, 8):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
               JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, '-c', script, str(tmp_path / f'd{n}')], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    results[n] = json.loads(out.stdout.strip().splitlines()[-1])
  assert results[1]['devices'] == 1 and results[8]['devices'] == 8
  for r1, r8 in zip(results[1]['records'], results[8]['records'], strict=True):
    assert r1.keys() == r8.keys()
    for key, value in r1.items():
      if key in metrics.TIMING_KEYS:
        continue
      if isinstance(value, float):
        assert value == pytest.approx(r8[key], rel=1e-4, abs=1e-5), key
      else:
        assert value == r8[key]


@pytest.mark.parametrize('name', ['cgmnist', 'ucimf'])
def test_bundled_configs_train_end_to_end(tmp_path, name):
  import importlib  # pylint: disable=import-outside-toplevel
  config = importlib.import_module(f'configs.{name}').get_config('method=uniform,smoke')
  config.progress_bar = False
  config.num_epochs = 1
  summary = train.train_and_evaluate(config, str(tmp_path))
  modalities = ('gray', 'color') if name == 'cgmnist' else ('fou', 'pix')
  assert set(summary['test_at_best']) == {'fused', *modalities}


def test_best_checkpoint_is_the_best_val_epoch(tmp_path):
  config = tiny_synthetic_config('vanilla')
  config.num_epochs = 3
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  val = metrics.select(metrics.read_metrics(workdir), 'val')
  best_record = [r for r in val if r['epoch'] == summary['best_epoch']][0]
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert ckpt.best_step() == best_record['step']
  assert ckpt.latest_step() == val[-1]['step']
  ckpt.close()


def test_distributed_initializes_once(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(train, '_DISTRIBUTED', [])
  train.initialize_distributed({'enabled': True, 'coordinator_address': '10.0.0.1:1234',
                                'num_processes': 4, 'process_id': 0})
  train.initialize_distributed()
  assert calls == [{'coordinator_address': '10.0.0.1:1234', 'num_processes': 4, 'process_id': 0}]


def test_distributed_defaults_leave_everything_to_the_environment(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  monkeypatch.setattr(train, '_DISTRIBUTED', [])
  train.initialize_distributed({'enabled': True})
  assert calls == [{'coordinator_address': None, 'num_processes': None, 'process_id': None}]


def test_read_metrics_skips_a_line_being_written(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 1, "epoch": 1, "split": "val"}\n{"step": 2, "epo')
  assert metrics.read_metrics(str(tmp_path)) == [{'step': 1, 'epoch': 1, 'split': 'val'}]


def test_relative_workdir(tmp_path, monkeypatch):
  """The README's main command uses a relative --workdir; Orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  config = tiny_synthetic_config('vanilla')
  train.train_and_evaluate(config, 'runs/relative', stop_after_epoch=1)
  train.train_and_evaluate(config, 'runs/relative')
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'runs' / 'relative' / 'checkpoints'))
  assert ckpt.best_step() is not None
  ckpt.close()


def test_prefetcher_gives_the_stream_in_order_and_leaves_the_position_of_what_it_gave():
  """Batches prepared ahead equal ``next_batch``'s, in order; the iterator ends where taking
  them one by one leaves it; an error preparing batch ``n`` is raised when batch ``n`` is taken."""
  reference, trainer = (train.Trainer(tiny_synthetic_config()) for _ in range(2))
  expected = [reference.next_batch() for _ in range(5)]
  got = list(trainer.prefetch(5))
  assert len(got) == 5 and trainer.train_iterator.step == reference.train_iterator.step == 5
  for want, batch in zip(expected, got):
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(batch)):
      np.testing.assert_array_equal(a, b)
  calls = []

  def failing_third():
    calls.append(1)
    if len(calls) == 3:
      raise ValueError('batch 3 is unreadable')
    return len(calls)

  batches = train.BatchPrefetcher(failing_third, 6)
  assert [next(batches), next(batches)] == [1, 2]
  with pytest.raises(ValueError, match='batch 3'):
    next(batches)
  assert len(calls) == 3  # nothing prepared after the failure
  early = train.BatchPrefetcher(failing_third, 100)
  early.close()  # stops the thread at once: at most PREFETCH_BATCHES + 1 were prepared
  assert len(calls) <= 3 + train.PREFETCH_BATCHES + 1


def test_mid_epoch_checkpoint_holds_the_position_of_the_consumed_batches(tmp_path):
  config = tiny_synthetic_config()
  config.checkpoint_every_steps = 3
  config.checkpoint_keep = 10
  train.train_and_evaluate(config, str(tmp_path / 'run'), stop_after_epoch=1)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), keep=10)
  state = train.Trainer(config).init_state()
  for step in (3, 6):
    _, extra = ckpt._restore(step, state)  # pylint: disable=protected-access
    assert extra['data_iterator']['step'] == step and extra['epoch_step'] == step
  ckpt.close()
