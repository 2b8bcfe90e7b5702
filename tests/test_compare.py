"""``mmjax compare``: methods x seeds as run directories in subprocesses, skip, resume, refusals."""

import json
import os
import shutil

import pytest

from conftest import ROOT
from mmjax import cli, compare, metrics, train
from mmjax import main as run_main

CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py')
TINY = ('--config.data.num_train=128', '--config.data.num_val=64', '--config.data.num_test=64',
        '--config.batch_size=32', '--config.eval_batch_size=64', '--config.progress_bar=False')


@pytest.fixture(autouse=True)
def _children_import_this_checkout(monkeypatch):
  """The runs are `python -m mmjax.main` subprocesses: they import the mmjax of this checkout."""
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))


def _argv(workdir, methods='vanilla,ogm_ge', seeds='0,1', epochs=1, *extra):
  return ['compare', '--config', f'{CONFIG}:smoke', '--methods', methods, '--seeds', seeds,
          '--workdir', str(workdir), f'--config.num_epochs={epochs}', *TINY, *extra]


def _progress(stderr):
  return [line for line in stderr.splitlines() if line.startswith('compare [')]


def test_two_methods_two_seeds_then_rerun_skips_all(tmp_path, capsys):
  workdir = tmp_path / 'cmp'
  assert cli.main(_argv(workdir, 'vanilla,ogm_ge', '0,1', 1, '--processes', '2')) == 0
  lines = _progress(capsys.readouterr().err)
  assert len(lines) == 4 and all(': finished in ' in line for line in lines)
  for method in ('vanilla', 'ogm_ge'):
    for seed in (0, 1):
      run = workdir / method / f'seed_{seed}'
      summary = metrics.read_summary(str(run))
      assert summary['finished'] and summary['method'] == method
      assert json.loads((run / 'config.json').read_text())['seed'] == seed
      assert (workdir / 'logs' / f'{method}_seed_{seed}.log').is_file()
  table = (workdir / 'comparison.md').read_text()
  rows = [line for line in table.splitlines() if line.startswith('| vanilla') or
          line.startswith('| ogm_ge')]
  assert len(rows) == 2 and all('| 0, 1 |' in row and ' ± ' in row for row in rows)
  csv_lines = (workdir / 'comparison.csv').read_text().strip().splitlines()
  assert len(csv_lines) == 3  # header + one row per method
  assert (workdir / 'report' / 'report.md').is_file()
  assert (workdir / 'report' / 'ogm_ge_seed_0' / 'accuracy.png').is_file()
  assert (workdir / 'report' / 'ogm_ge_seed_0' / 'ogm_ge_coefficients.png').is_file()

  before = {p: os.path.getmtime(p) for p in workdir.glob('*/seed_*/metrics.jsonl')}
  assert cli.main(_argv(workdir, 'vanilla,ogm_ge', '0,1', 1, '--processes', '2')) == 0
  lines = _progress(capsys.readouterr().err)
  assert len(lines) == 4 and all(': skipped (finished before)' in line for line in lines)
  assert before == {p: os.path.getmtime(p) for p in workdir.glob('*/seed_*/metrics.jsonl')}
  assert (workdir / 'comparison.md').read_text() == table


def test_unfinished_run_resumes_and_a_refused_run_is_named(tmp_path, capsys):
  """seed 0 stopped after epoch 1 of 2 resumes; seed 1's directory holds another run's config,
  so that run refuses (exit 2) and compare names it, tabulates the rest and exits 1."""
  workdir = tmp_path / 'cmp'
  args, overrides = compare.parse_args(_argv(workdir, 'vanilla', '0,1', 2)[1:])
  first, second = compare.plan(args, overrides)
  train.train_and_evaluate(run_main.parse_flags(first.argv).config, first.workdir,
                           stop_after_epoch=1)
  os.makedirs(second.workdir)
  shutil.copy(os.path.join(first.workdir, 'config.json'), second.workdir)
  capsys.readouterr()
  assert cli.main(_argv(workdir, 'vanilla', '0,1', 2)) == 1
  err = capsys.readouterr().err
  lines = _progress(err)
  resumed = next(line for line in lines if 'vanilla seed 0' in line)
  refused = next(line for line in lines if 'vanilla seed 1' in line)
  assert ': finished in ' in resumed
  assert 'FAILED' in refused and 'exit code 2' in refused and 'seed' in refused
  assert 'rerun the same command' in err
  records = metrics.select(metrics.read_metrics(first.workdir), 'train')
  assert [r['epoch'] for r in records] == [1, 2]
  assert '| 0 |' in (workdir / 'comparison.md').read_text()


@pytest.mark.parametrize('extra, message', [
    (('--methods', 'vanilla,bogus'), "--methods: 'bogus' is not a method; valid methods are"),
    (('--methods', 'vanilla,vanilla'), "--methods: 'vanilla' is given twice"),
    (('--methods', ','), '--methods is empty'),
    (('--seeds', '0,x'), "--seeds: 'x' is not an integer seed"),
    (('--seeds', '0,-1'), 'seed -1 is negative'),
    (('--processes', '0'), '--processes 0 must be at least 1'),
    (('--config', f'{CONFIG}:smoke,seed=3'), 'sets seed=...; mmjax compare sets it per run'),
    (('--config.bogus=1',), 'bogus'),
    (('--frobnicate',), "unexpected argument '--frobnicate'"),
])
def test_mistakes_are_one_line_and_write_nothing(tmp_path, capsys, extra, message):
  workdir = tmp_path / 'cmp'
  argv = ['--config', f'{CONFIG}:smoke', '--methods', 'vanilla', '--seeds', '0',
          '--workdir', str(workdir)]
  for flag, value in zip(extra[::2], extra[1::2]):
    if flag in argv:
      argv[argv.index(flag) + 1] = value
    else:
      argv += [flag, value]
  if len(extra) == 1:
    argv.append(extra[0])
  assert cli.main(['compare', *argv]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('mmjax: error: ') and '\n' not in err and message in err
  assert not workdir.exists()


def test_help_lists_usage(capsys):
  assert cli.main(['compare', '--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith(compare.USAGE) and 'CUDA_VISIBLE_DEVICES' in out
  assert 'compare' in cli.usage()
