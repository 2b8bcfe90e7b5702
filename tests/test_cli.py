"""The ``mmjax`` console command (mmjax/cli.py) and ``python -m mmjax.main --print_config``."""

import json
import os
import re
import subprocess
import sys
import tomllib

import flax.linen as nn
import pytest

from conftest import ROOT
from mmjax import cli, main, models, train

SYNTHETIC = os.path.join(ROOT, 'configs', 'synthetic.py')
TINY = [f'--config={SYNTHETIC}:method=uniform,smoke', '--config.data.num_train=128',
        '--config.data.num_val=64', '--config.data.num_test=64', '--config.num_epochs=1',
        '--config.progress_bar=False']


def _one_error_line(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('mmjax: error: '), err
  return lines[0]


def test_the_console_script_is_cli_main():
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert scripts == {'mmjax': 'mmjax.cli:main'}


def test_help_lists_every_command(capsys):
  assert cli.main(['--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: mmjax COMMAND')
  for name in ('train', 'config', 'list', 'report'):
    assert f'\n  {name} ' in out


def test_no_command_and_an_unknown_command_exit_2(capsys):
  assert cli.main([]) == 2
  assert 'usage: mmjax COMMAND' in capsys.readouterr().err
  assert cli.main(['trian', '--config=x']) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "'trian' is not an mmjax command" in line and "'train'" in line


def test_a_command_is_one_function_and_one_registration(monkeypatch, capsys):
  monkeypatch.setattr(cli, 'COMMANDS', dict(cli.COMMANDS))

  @cli.command('echo')
  def echo(argv):
    """Print the arguments."""
    print(' '.join(argv))
    return 3

  assert cli.main(['echo', 'a', 'b']) == 3
  assert capsys.readouterr().out == 'a b\n'
  assert cli.main(['--help']) == 0
  assert re.search(r'^  echo +Print the arguments\.$', capsys.readouterr().out, re.MULTILINE)
  with pytest.raises(ValueError, match="'echo' is registered twice"):
    cli.command('echo')(echo)


def test_list_shows_the_registries_with_options_and_defaults(capsys):
  assert cli.main(['list']) == 0
  out = capsys.readouterr().out
  for heading in ('Data sets (', 'Methods (', 'Encoders ('):
    assert heading in out
  # Defaults as the modules define them.
  assert '  mlp: ' in out and '      hidden = (256, 256)\n      features = 128\n' in out
  assert '  gblend: ' in out and '      heldout_fraction = 0.08\n' in out
  assert '  synthetic: ' in out and '      num_classes = 4\n' in out
  assert '  greedy: ' in out and "      mode = 'guided'\n" in out
  assert '  vanilla: Naive joint training' in out and '      (no options)' in out


def test_list_json_and_sections(capsys):
  assert cli.main(['list', 'methods', 'encoders', '--json']) == 0
  listed = json.loads(capsys.readouterr().out)
  assert list(listed) == ['methods', 'encoders']
  assert {'vanilla', 'uniform', 'fixed', 'unimodal', 'gblend', 'greedy'} <= set(listed['methods'])
  assert listed['methods']['greedy']['options'] == {
      'mode': 'guided', 'alpha': 0.01, 'window': 5, 'starting_epoch': 2}
  assert listed['encoders']['mlp']['options'] == {'hidden': [256, 256], 'features': 128,
                                                  'dropout': 0.0}
  assert cli.main(['list', 'optimizers']) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert "'optimizers' is not a section" in line and "'encoders'" in line


class _UserEncoder(nn.Module):
  """An encoder of the user's own."""
  width: int
  depth: int = 2

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.Dense(self.width)(x)


def test_list_reads_what_is_registered_now(monkeypatch, capsys):
  monkeypatch.setitem(models.ENCODERS, 'user_mlp', _UserEncoder)
  assert cli.main(['list', 'encoders', '--json']) == 0
  assert json.loads(capsys.readouterr().out)['encoders']['user_mlp'] == {
      'summary': 'An encoder of the user\'s own.',
      'options': {'width': cli.REQUIRED, 'depth': 2}}


def test_config_prints_what_a_run_stores_in_config_json(tmp_path, capsys):
  argv = [*TINY, '--config.optimizer.learning_rate=0.25']
  assert cli.main(['config', *argv]) == 0
  printed = capsys.readouterr().out
  config = main.parse_flags(argv, workdir=False).config
  train.prepare_workdir(str(tmp_path), config)
  assert printed == (tmp_path / 'config.json').read_text(encoding='utf-8') + '\n'
  assert json.loads(printed)['optimizer']['learning_rate'] == 0.25
  # python -m mmjax.main --print_config prints the same, without a workdir.
  assert main.main([*argv, '--print_config']) == 0
  assert capsys.readouterr().out == printed


@pytest.mark.parametrize('argv, message', [
    (['--config.data.num_classes=1'], 'num_classes must be an integer >= 2, got 1'),
    (['--config.method.name=greedy'], "method 'greedy' needs model.name = 'mmtm'"),
    (['--config.batch_size=0'], 'batch_size = 0 is not valid: a positive integer'),
    (['--workdir=/tmp/somewhere'], "Unknown command line flag 'workdir'. usage: mmjax config"),
])
def test_config_checks_like_a_run_does(argv, message, capsys):
  assert cli.main(['config', *TINY, *argv]) == 2
  captured = capsys.readouterr()
  assert message in _one_error_line(captured.err) and captured.out == ''


def test_print_config_checks_and_writes_nothing(tmp_path, capsys):
  workdir = tmp_path / 'run'
  assert main.main([*TINY, '--config.data.num_classes=1', '--print_config',
                    f'--workdir={workdir}']) == 2
  assert 'num_classes must be an integer >= 2' in _one_error_line(capsys.readouterr().err)
  assert main.main([*TINY, '--print_config', f'--workdir={workdir}']) == 0
  assert not workdir.exists()


def test_train_errors_name_the_train_command(capsys):
  assert cli.main(['train', *TINY]) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert '--workdir is required. usage: mmjax train --config' in line


def test_train_help_lists_flags_and_registries(capsys):
  assert cli.main(['train', '--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: mmjax train --config')
  assert '--print_config' in out and '  mlp: ' in out and '  gblend: ' in out


def test_train_then_report(tmp_path, capsys):
  workdir, out = tmp_path / 'run', tmp_path / 'report'
  assert cli.main(['train', *TINY, f'--workdir={workdir}']) == 0
  assert 'best val acc' in capsys.readouterr().out
  assert cli.main(['config', *TINY]) == 0
  assert capsys.readouterr().out == (workdir / 'config.json').read_text(encoding='utf-8') + '\n'
  assert (workdir / 'metrics.jsonl').is_file()
  assert cli.main(['report', str(workdir), f'--out={out}']) == 0
  assert 'wrote' in capsys.readouterr().out
  assert os.listdir(out)


def test_python_m_mmjax_cli():
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))}
  result = subprocess.run([sys.executable, '-m', 'mmjax.cli', 'list', 'encoders'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('Encoders (') and '  resnet18: ' in result.stdout
