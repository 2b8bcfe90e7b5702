"""``mmjax compare``: methods x seeds as run directories in subprocesses, skip, resume, refusals."""

import csv
import io
import json
import os
import shutil

import pytest

from conftest import ROOT
from mmjax import cli, compare, metrics, report, train
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
    (('--methods', 'vanilla,ogm_ge:bogus=1'),
     "--methods 'ogm_ge:bogus=1': method.bogus is not an option of method 'ogm_ge'; its options "
     "are ['alpha', 'coefficient',"),
    (('--methods', 'ogm_ge:seed=1'), "method.seed is not an option of method 'ogm_ge'"),
    (('--methods', 'ogm_ge:alpha'), "'alpha' in 'ogm_ge:alpha' is not KEY=VALUE"),
    (('--methods', ':alpha=1'), "':alpha=1' does not start with a method name"),
    (('--methods', 'ogm_ge:alpha=1:alpha=2'), "'ogm_ge:alpha=1:alpha=2' sets alpha twice"),
    (('--methods', 'ogm_ge:alpha=0.5:noise=none,ogm_ge:noise=none:alpha=0.5'),
     "'ogm_ge:noise=none:alpha=0.5' is the same method and options as 'ogm_ge:alpha=0.5:noise=none'"),
    (('--methods', 'ogm_ge:noise=../x'), "value '../x' of noise may only hold letters"),
    (('--methods', 'ogm_ge:alpha=abc'), 'ogm_ge:alpha=abc seed 0: '),
    (('--methods', 'ogm_ge:alpha=0.3', '--config', f'{CONFIG}:smoke,alpha=0.5'),
     "and --methods 'ogm_ge:alpha=0.3' both set alpha"),
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


def test_method_variants_parse_to_safe_distinct_directories():
  plain = compare.parse_method('ogm_ge')
  assert (plain.label, plain.directory, plain.options) == ('ogm_ge', 'ogm_ge', ())
  variant = compare.parse_method('ogm_ge:noise=none:alpha=0.5')
  assert variant.label == 'ogm_ge:alpha=0.5:noise=none'  # keys sorted: one spelling per variant
  assert variant.directory == 'ogm_ge--alpha=0.5--noise=none'
  assert compare.parse_method(' ogm_ge : alpha = 1e-3 ').directory == 'ogm_ge--alpha=1e-3'


def test_per_method_options_run_in_their_own_directories(tmp_path, capsys):
  """OGM-GE with two alphas: each variant is a run directory of its own, its config carries
  the options, and the table has a row per variant with the literature column (none for the
  synthetic set)."""
  workdir = tmp_path / 'cmp'
  assert cli.main(_argv(workdir, 'ogm_ge:noise=none:alpha=0.5,ogm_ge:alpha=0.3:noise=none', '0',
                        1)) == 0
  lines = _progress(capsys.readouterr().err)
  assert len(lines) == 2 and all(': finished in ' in line for line in lines)
  assert any('] ogm_ge:alpha=0.5:noise=none seed 0: finished' in line for line in lines)
  for alpha in (0.5, 0.3):
    run = workdir / f'ogm_ge--alpha={alpha}--noise=none' / 'seed_0'
    method = json.loads((run / 'config.json').read_text())['method']
    assert (method['name'], method['alpha'], method['noise']) == ('ogm_ge', alpha, 'none')
    assert (workdir / 'logs' / f'ogm_ge--alpha={alpha}--noise=none_seed_0.log').is_file()
  table = (workdir / 'comparison.md').read_text().splitlines()
  assert table[0].endswith(f'| {compare.LITERATURE_COLUMN} |')
  row = next(line for line in table if line.startswith('| ogm_ge--alpha=0.5--noise=none_seed_0 |'))
  assert '| ogm_ge | method.alpha=0.5 |' in row and row.endswith('| — |')
  assert any(line.startswith('Literature: — for synthetic: ') for line in table)
  header = (workdir / 'comparison.csv').read_text().splitlines()[0]
  assert header.endswith('literature/accuracy,literature/source')


def _group(method, accuracy):
  stats = (accuracy, 0.01, 3)
  return {'group': method, 'method': method, 'config': '', 'runs': [f'{method}/seed_0'],
          'seeds': [0, 1, 2], 'repeats': {}, 'repeat_spread': {}, 'epochs': [10],
          'best_val/fused': stats, 'test_at_best/fused': stats}


def test_literature_column_gives_the_reported_number_and_its_source():
  table = report.ComparisonTable(heads=('fused',), groups=[_group('vanilla', 0.6),
                                                           _group('inforeg', 0.7)], runs=[])
  markdown, csv_text = compare.with_literature(table, 'crema_d')
  rows = markdown.splitlines()
  # BalanceBenchmark's CREMA-D "Baseline (joint training)" row: 65.50 %
  assert rows[2].startswith('| vanilla |') and rows[2].endswith('| 0.6550 (BalanceBenchmark) |')
  assert rows[3].startswith('| inforeg |') and rows[3].endswith('| — |')
  assert any(line.startswith('Literature: BalanceBenchmark (Xu, Cui, Huang, Wang, Hu') for line in rows)
  csv_rows = list(csv.DictReader(io.StringIO(csv_text)))
  assert csv_rows[0]['literature/accuracy'] == '0.655' and csv_rows[0]['test_at_best/fused/mean'] == '0.6'
  assert csv_rows[0]['literature/source'].startswith('BalanceBenchmark')
  assert csv_rows[1]['literature/accuracy'] == csv_rows[1]['literature/source'] == ''
  markdown, csv_text = compare.with_literature(table, 'cgmnist')
  assert all(row.endswith('| — |') for row in markdown.splitlines()[2:4])
  assert 'Wu et al. (ICML 2022)' in markdown
  assert all(r['literature/accuracy'] == '' for r in csv.DictReader(io.StringIO(csv_text)))


def test_help_lists_usage(capsys):
  assert cli.main(['compare', '--help']) == 0
  out = capsys.readouterr().out
  assert out.startswith(compare.USAGE) and 'CUDA_VISIBLE_DEVICES' in out
  assert 'compare' in cli.usage()
