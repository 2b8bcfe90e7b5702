"""Crash consistency: kill points, corrupt checkpoints, torn metrics, the workdir lock."""

import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (ROOT, assert_same_run, poison_training_inputs, restore_latest_state,
                      tiny_synthetic_config)
from benchmarks import fault_battery
from mmjax import checkpointing, faults, metrics, optim, train, workdir_lock


# ----- kill points (a subset of benchmarks/fault_battery.py) ---------------------------------------
@pytest.fixture(scope='module')
def references(tmp_path_factory):
  """Uninterrupted runs of the battery configs (built on first use) and their traces."""
  base = tmp_path_factory.mktemp('references')
  cache = {}

  def get(name):
    if name not in cache:
      trace = fault_battery.run_reference(name, str(base / name), str(base / f'{name}.trace'))
      target = fault_battery._state_target(fault_battery.tiny_config(name))  # pylint: disable=protected-access
      cache[name] = (trace, target, fault_battery.snapshot(str(base / name), target))
    return cache[name]
  return get


def _trial(name, trace, what):
  return [(point, n) for point, n, w in fault_battery.choose_trials(name, trace) if w == what][0]


@pytest.mark.parametrize('name, what', [
    # Issue 13 item 1: the estimation record was written twice after this kill.
    ('gblend_online', 'inside the first epoch after the 2nd re-estimation'),
    ('gblend_online', 'inside the 2nd estimation (training the copies)'),
    # Item 2: the two sides of the commit of an epoch-end checkpoint.
    ('vanilla', 'epoch-end checkpoint written, not committed'),
    ('vanilla', 'epoch-end checkpoint committed'),
    # Item 3: resume from a mid-epoch checkpoint.
    ('vanilla', 'inside epoch 2, after a mid-epoch checkpoint'),
    ('vanilla', 'after the first test record, before its checkpoint'),
])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, references, name, what):
  trace, target, reference = references(name)
  point, n = _trial(name, trace, what)
  code, stderr = fault_battery.kill_and_resume(name, point, n, str(tmp_path))
  assert code == faults.EXIT_CODE, stderr
  assert fault_battery.compare(reference, fault_battery.snapshot(str(tmp_path), target)) == []
  assert not glob.glob(str(tmp_path / 'checkpoints' / '*orbax-checkpoint-tmp*'))


def test_fault_spec_is_checked(monkeypatch):
  monkeypatch.setenv(faults.ENV_VAR, 'nowhere:1')
  with pytest.raises(ValueError, match=r"MMJAX_FAULT='nowhere:1': expected <point>:<n>"):
    faults.maybe_fail('train_step')


# ----- one checkpoint manager: latest N and the best ----------------------------------------------
def test_manager_keeps_latest_and_earliest_best(tmp_path):
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), keep=1)
  state = {'w': jnp.arange(3.0)}
  for step, acc in zip((1, 2, 3, 4), (0.5, 0.9, 0.9, 0.6)):
    ckpt.save(step, state, {'epoch': step}, val_accuracy=acc)
  ckpt.save(5, state, {'epoch': 4, 'epoch_step': 1})  # a mid-epoch checkpoint: no metric
  ckpt.wait()
  # Latest 1 (step 5) plus the best: 0.9 at steps 2 and 3, the earlier wins.
  assert ckpt.all_steps() == [2, 5] and ckpt.best_step() == 2 and ckpt.latest_step() == 5
  ckpt.close()


def test_checkpoints_left_by_a_crash_before_clean_up_are_removed_on_open(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  ckpt = checkpointing.Checkpointer(directory, keep=4)  # as if the clean-up after save never ran
  for step, acc in zip((1, 2, 3, 4), (0.5, 0.9, 0.6, 0.7)):
    ckpt.save(step, {'w': jnp.arange(3.0)}, {'epoch': step}, val_accuracy=acc)
  ckpt.close()
  ckpt = checkpointing.Checkpointer(directory, keep=1)
  assert ckpt.all_steps() == [2, 4] and sorted(os.listdir(directory)) == ['2', '4']
  ckpt.close()


def test_orphan_tmp_dirs_are_removed_and_old_layout_refused(tmp_path):
  directory = tmp_path / 'checkpoints'
  orphan = directory / '8.orbax-checkpoint-tmp-1234'
  orphan.mkdir(parents=True)
  (orphan / 'partial').write_text('x')
  checkpointing.Checkpointer(str(directory)).close()
  assert not orphan.exists()
  (directory / 'latest').mkdir()
  with pytest.raises(ValueError, match=r'layout of an older mmjax \(latest/\)'):
    checkpointing.Checkpointer(str(directory))


def _truncate_array_files(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', '**', 'd', '*'), recursive=True):
    with open(path, 'r+b') as f:
      f.truncate(4)


def _garble_metadata(step_dir):
  with open(os.path.join(step_dir, 'state', '_METADATA'), 'w', encoding='utf-8') as f:
    f.write('{"tree_metadata": ')


def _empty_folder(step_dir):
  for name in os.listdir(step_dir):
    path = os.path.join(step_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


@pytest.mark.parametrize('corrupt', [_truncate_array_files, _garble_metadata, _empty_folder])
def test_corrupt_latest_checkpoint_falls_back_and_is_kept_aside(tmp_path, corrupt, capfd):
  config = tiny_synthetic_config('vanilla')
  config.num_epochs = 3
  full, workdir = str(tmp_path / 'full'), str(tmp_path / 'run')
  train.train_and_evaluate(config, full)
  train.train_and_evaluate(config, workdir, stop_after_epoch=2)
  steps_per_epoch = config.data.num_train // config.batch_size
  corrupt(os.path.join(workdir, 'checkpoints', str(2 * steps_per_epoch)))
  capfd.readouterr()
  train.train_and_evaluate(config, workdir)
  err = capfd.readouterr().err
  assert f'checkpoint step {2 * steps_per_epoch} in' in err and 'moved to' in err
  aside = glob.glob(os.path.join(workdir, 'checkpoints', 'corrupt', f'{2 * steps_per_epoch}-*'))
  assert len(aside) == 1
  # Resumed from the epoch-1 checkpoint, the run ends where the uninterrupted one does.
  assert_same_run(full, workdir, config)


def test_no_restorable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
  config = tiny_synthetic_config('vanilla')
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir, stop_after_epoch=1)
  step_dir = os.path.join(workdir, 'checkpoints', '8')
  _garble_metadata(step_dir)
  with pytest.raises(ValueError, match=r'no checkpoint in .* restores; the newest \(step 8\) fails'):
    train.train_and_evaluate(config, workdir)
  assert os.path.isdir(step_dir)


# ----- metrics.jsonl: torn tails and garbage ----------------------------------------------------
def test_garbage_line_names_file_and_line(tmp_path):
  path = tmp_path / metrics.METRICS_FILE
  path.write_text('{"step": 1, "epoch": 1, "split": "val"}\nnot json\n{"step": 2, "epoch": 2, '
                  '"split": "val"}\n')
  with pytest.raises(ValueError, match=rf'{path}, line 2: not a JSON metrics record'):
    metrics.read_metrics(str(tmp_path))
  path.write_text('{"step": 1, "epoch": 1, "split": "val"}\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r'line 2: a metrics record needs "step", "epoch" and "split"'):
    metrics.read_metrics(str(tmp_path))


def test_torn_last_line_is_dropped_and_truncated_away_on_resume(tmp_path):
  config = tiny_synthetic_config('vanilla')
  full, workdir = str(tmp_path / 'full'), str(tmp_path / 'run')
  train.train_and_evaluate(config, full)
  train.train_and_evaluate(config, workdir, stop_after_epoch=1)
  with open(os.path.join(workdir, metrics.METRICS_FILE), 'a', encoding='utf-8') as f:
    f.write('{"step": 16, "epoch": 2, "torn')
  assert len(metrics.read_metrics(workdir)) == 3
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, metrics.METRICS_FILE), encoding='utf-8') as f:
    assert '"torn' not in f.read()
  assert (metrics.without_timing(metrics.read_metrics(full))
          == metrics.without_timing(metrics.read_metrics(workdir)))


# ----- one process per workdir ----------------------------------------------------------------
_HOLDER = """
import sys
sys.path.insert(0, {root!r})
from mmjax import workdir_lock
lock = workdir_lock.WorkdirLock(sys.argv[1])
print('locked', flush=True)
sys.stdin.readline()
"""


def test_second_process_is_refused_then_takes_over(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER.format(root=ROOT), workdir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(ValueError, match=rf'is in use by another mmjax run \(host=\S+ pid={holder.pid}\)'):
      train.train_and_evaluate(tiny_synthetic_config('vanilla'), workdir)
    assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]  # nothing else written
  finally:
    holder.kill()  # as kill -9: the lock goes with the process
    holder.wait()
  train.train_and_evaluate(tiny_synthetic_config('vanilla'), workdir, stop_after_epoch=1)
  with open(os.path.join(workdir, workdir_lock.LOCK_FILE), encoding='utf-8') as f:
    assert f.read() == ''  # released on exit


def test_writer_of_other_processes_counts_and_writes_nothing(tmp_path):
  """Processes other than 0 of a multi-host run keep the record count of their checkpoints."""
  writer = metrics.MetricWriter(str(tmp_path), records=5, enabled=False)
  writer.write(8, 1, 'train', {'loss/fused': 1.0})
  writer.close()
  assert writer.records == 6 and os.listdir(tmp_path) == []


# ----- the per-epoch log line, learning rate, steps/s -------------------------------------------
def test_epoch_line_and_learning_rate_without_progress_bar(tmp_path, capfd):
  config = tiny_synthetic_config('vanilla')
  config.optimizer.update({'name': 'sgd', 'learning_rate': 0.1, 'schedule': 'cosine'})
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  err = capfd.readouterr().err
  # Cosine over 16 steps: the last update of epoch 1 is number 7, of epoch 2 number 15.
  expected = [0.1 * 0.5 * (1 + np.cos(np.pi * 7 / 16)), 0.1 * 0.5 * (1 + np.cos(np.pi * 15 / 16))]
  train_records = metrics.select(metrics.read_metrics(workdir), 'train')
  assert [r['learning_rate'] for r in train_records] == pytest.approx(expected, rel=1e-5)  # float32
  assert all(r['steps_per_second'] > 0 for r in train_records)
  for epoch, lr in zip((1, 2), expected):
    assert f'epoch {epoch}/2: ' in err and f'steps/s, lr {lr:.4g} | train fused=' in err
  tags = {tag for tag, _, _ in metrics.read_tensorboard_scalars(workdir)}
  assert {'train/learning_rate', 'train/steps_per_second'} <= tags


def test_learning_rate_applies_the_plateau_scale():
  cfg = {'name': 'sgd', 'learning_rate': 0.01, 'schedule': 'plateau'}
  tx = optim.build_optimizer(cfg, steps_per_epoch=4, num_epochs=2)
  opt_state = tx.init({'w': jnp.zeros(2)})
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)  # noqa: E731
  reduced = jax.tree.map(lambda x: x._replace(scale=jnp.float32(0.3)) if is_plateau(x) else x,
                         opt_state, is_leaf=is_plateau)
  schedule = optim.learning_rate_schedule(cfg, 4, 2)
  assert optim.learning_rate(schedule, opt_state, 5) == pytest.approx(0.01)
  assert optim.learning_rate(schedule, reduced, 5) == pytest.approx(0.003)


def test_nan_before_the_first_checkpoint_says_so(tmp_path, monkeypatch):
  poison_training_inputs(monkeypatch, 'a')
  with pytest.raises(FloatingPointError, match=r'at step 0 \(epoch 1\); the run stopped and no '
                                               r'checkpoint yet\.'):
    train.train_and_evaluate(tiny_synthetic_config('vanilla'), str(tmp_path))


def test_checkpoint_every_steps(tmp_path):
  config = tiny_synthetic_config('vanilla')
  config.checkpoint_every_steps = 3
  config.checkpoint_keep = 10
  train.train_and_evaluate(config, str(tmp_path), stop_after_epoch=1)
  ckpt = checkpointing.Checkpointer(str(tmp_path / 'checkpoints'))
  assert ckpt.all_steps() == [3, 6, 8]
  ckpt.close()
  _, extra = restore_latest_state(str(tmp_path), config)
  assert extra['epoch'] == 1 and extra['epoch_step'] == 0 and extra['metrics_records'] == 3
  with open(os.path.join(tmp_path, 'checkpoints', '6', 'extra', 'metadata'), encoding='utf-8') as f:
    mid = json.load(f)
  assert mid['epoch'] == 0 and mid['epoch_step'] == 6 and mid['data_iterator']['step'] == 6
  # The sums of exactly the first 6 steps (not of later ones: the save is asynchronous).
  trainer = train.Trainer(config)
  state, expected = trainer.init_state(), {}
  for _ in range(6):
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    for key, value in jax.device_get(step_metrics).items():
      expected[key] = expected.get(key, 0.0) + float(value)
  assert mid['train_sums'] == expected
