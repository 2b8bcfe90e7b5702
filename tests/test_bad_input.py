"""Bad input: one line on stderr, exit code 2, an unchanged run directory (issue 13, items 7-8).

The cases come from ``benchmarks/bad_input_battery.py`` (``python -m benchmarks.bad_input_battery``
runs all of them); here every in-process case runs through ``mmjax.main.main`` and a few as real
subprocesses.
"""

import errno
import json
import os
import re
import subprocess
import sys

import pytest

from benchmarks import bad_input_battery as battery
from conftest import ROOT, tiny_synthetic_config
from mmjax import main, metrics, train
from mmjax.errors import UserError

CASES = {case.name: case for case in battery.CASES}


@pytest.fixture(scope='module')
def battery_dirs(tmp_path_factory):
  """The config files of the battery and a cache for its finished reference run."""
  root = tmp_path_factory.mktemp('battery')
  files = battery.write_config_files(str(root / 'config_files'))
  cache = root / 'cache'
  cache.mkdir()
  return files, str(cache)


def test_the_battery_holds_at_least_sixty_distinct_bad_inputs():
  assert len(CASES) == len(battery.CASES) >= 60


@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_input_in_process(name, battery_dirs, tmp_path):
  files, cache = battery_dirs
  result = battery.run_case(CASES[name], str(tmp_path), cache, files)
  assert not result.problems, (result.problems, result.stderr)


@pytest.mark.parametrize('name', ['unknown nested key', 'different learning rate on a run'])
def test_bad_input_as_a_subprocess(name, battery_dirs, tmp_path):
  files, cache = battery_dirs
  result = battery.run_case(CASES[name], str(tmp_path), cache, files, subprocess_mode=True)
  assert not result.problems, (result.problems, result.stderr)
  assert 'Traceback' not in result.stderr


def test_snapshot_sees_a_touched_file_and_a_new_folder(tmp_path):
  (tmp_path / 'f').write_text('x')
  before = battery.snapshot(str(tmp_path))
  os.utime(tmp_path / 'f', ns=(1, 1))
  touched = battery.snapshot(str(tmp_path))
  assert touched != before
  (tmp_path / 'new').mkdir()
  assert battery.snapshot(str(tmp_path)) != touched


def test_a_rejected_config_leaves_no_workdir(tmp_path):
  config = tiny_synthetic_config()
  config.batch_size = 10_000
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match='batch_size=10000 exceeds the 256 examples'):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
  config.batch_size = 32  # the corrected rerun trains
  assert train.train_and_evaluate(config, str(workdir))['best_epoch'] in (1, 2)


def test_a_full_disk_during_training_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
  """ENOSPC while metrics are written: one line naming the file, exit code 2, no traceback."""
  path = str(tmp_path / 'run' / metrics.METRICS_FILE)

  def full_disk(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

  monkeypatch.setattr(metrics.MetricWriter, 'write', full_disk)
  code = main.main(['--config', 'configs/synthetic.py:smoke', '--config.data.num_train=128',
                    '--config.progress_bar=False', '--workdir', str(tmp_path / 'run')])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1] == (f'mmjax: error: cannot write {path}: No space left on device. Free space or '
                     'fix permissions, then rerun the same command to resume.')
  assert not any('Traceback' in line for line in err)


@pytest.fixture
def small_disk(tmp_path):
  """A 300 KiB tmpfs: room for config.json and the first metrics, not for a checkpoint."""
  mount = tmp_path / 'disk'
  mount.mkdir()
  done = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=300k', 'tmpfs', str(mount)],
                        capture_output=True, check=False)
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.decode().strip()}')
  yield mount
  subprocess.run(['umount', str(mount)], check=True)


def test_a_really_full_disk_is_one_line(small_disk):
  """Orbax's background saves fail with ENOSPC: one line naming the file, not 600 lines of
  tracebacks from its threads."""
  workdir = str(small_disk / 'run')
  cmd = [sys.executable, '-m', 'mmjax.main', '--config', 'configs/synthetic.py:method=uniform,smoke',
         '--config.data.num_train=256', '--config.progress_bar=False', '--workdir', workdir]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2, out.stderr[-3000:]
  progress = re.compile(r'epoch \d+/\d+: .* steps/s, lr ')  # the per-epoch log line
  assert [line for line in lines
          if 'JAX process' not in line and not progress.match(line)] == [lines[-1]]
  assert re.fullmatch(rf'mmjax: error: cannot write {re.escape(workdir)}(/\S+)?: No space left on '
                      r'device\. Free space or fix permissions, then rerun the same command to '
                      r'resume\.', lines[-1])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
  def bug(*args, **kwargs):
    raise KeyError('a bug, not a user error')

  monkeypatch.setattr(train, 'Trainer', bug)
  with pytest.raises(KeyError, match='a bug'):
    main.main(['--config', 'configs/synthetic.py:smoke', '--workdir', str(tmp_path / 'run')])


def test_help_exits_zero(capsys):
  assert main.main(['--help']) == 0
  assert 'usage: python -m mmjax.main' in capsys.readouterr().out


def test_resumable_settings_may_change_and_config_json_follows(tmp_path):
  """Item 9: progress_bar, log_every_steps, checkpoint_keep, checkpoint_every_steps and a
  larger num_epochs (constant schedule) resume; the run equals an uninterrupted one."""
  config = tiny_synthetic_config('uniform')
  config.num_epochs = 1
  resumed = str(tmp_path / 'resumed')
  train.train_and_evaluate(config, resumed)
  changed = tiny_synthetic_config('uniform')
  changed.num_epochs = 2
  changed.progress_bar = True
  changed.log_every_steps = 3
  changed.checkpoint_keep = 3
  changed.distributed.coordinator_address = '10.0.0.1:1234'
  train.train_and_evaluate(changed, resumed)
  with open(os.path.join(resumed, 'config.json'), encoding='utf-8') as f:
    stored = json.load(f)
  assert (stored['num_epochs'], stored['log_every_steps'], stored['checkpoint_keep']) == (2, 3, 3)
  assert not os.path.exists(os.path.join(resumed, 'config.json.tmp'))
  full = str(tmp_path / 'full')
  train.train_and_evaluate(tiny_synthetic_config('uniform'), full)  # 2 epochs straight through
  assert (metrics.without_timing(metrics.read_metrics(full))
          == metrics.without_timing(metrics.read_metrics(resumed)))


def test_more_epochs_are_refused_where_the_schedule_depends_on_them(tmp_path):
  config = tiny_synthetic_config()
  config.num_epochs = 1
  config.optimizer.schedule = 'cosine'
  train.train_and_evaluate(config, str(tmp_path))
  before = battery.snapshot(str(tmp_path))
  config.num_epochs = 2
  with pytest.raises(UserError, match='Run-defining differences: num_epochs: 1 -> 2'):
    train.train_and_evaluate(config, str(tmp_path))
  assert battery.snapshot(str(tmp_path)) == before
