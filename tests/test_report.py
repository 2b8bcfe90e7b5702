"""Reports: tables and plots from tiny real runs, the command line, and its error messages."""

import csv
import fcntl
import io
import json
import math
import os
import shutil

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from conftest import tiny_synthetic_config
from mmjax import metrics, report, train

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
HEADS = ('fused', 'a', 'b')


def _train_all(root):
  """Trains the four runs in ``root``; returns ``{name: (workdir, summary)}``."""
  configs = {f'vanilla_s{seed}': tiny_synthetic_config('vanilla', seed=seed) for seed in (0, 1)}
  configs['gblend'] = tiny_synthetic_config('gblend', estimator='online')
  configs['gblend'].method.update({'warmup_epochs': 1, 'super_epoch': 1})
  configs['greedy'] = tiny_synthetic_config('greedy', mode='guided')
  return {name: (str(root / name), train.train_and_evaluate(config, str(root / name)))
          for name, config in configs.items()}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Four tiny real runs (two epochs each): vanilla with seeds 0 and 1, G-Blend and greedy.

  Under pytest-xdist the workers share one set: the first trains it under a file lock in the
  session's common temporary directory, the others read it.
  """
  base = tmp_path_factory.getbasetemp()
  root = (base.parent if 'PYTEST_XDIST_WORKER' in os.environ else base) / 'report_runs'
  root.mkdir(exist_ok=True)
  with open(root / 'lock', 'w', encoding='utf-8') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    done = root / 'summaries.json'
    if not done.exists():
      done.write_text(json.dumps(_train_all(root)))
    return {name: tuple(value) for name, value in json.loads(done.read_text()).items()}


def _legend(fig):
  return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def _data_lines(ax):
  """The lines drawn from metrics (reference lines from axhline span the axes: x is [0, 1])."""
  return [line for line in ax.get_lines() if line.get_label() and not line.get_label().startswith('_')
          and 'threshold' not in line.get_label()]


# ----- loading -----------------------------------------------------------------------------------


def test_load_run_reads_config_and_records(runs):
  workdir, _ = runs['vanilla_s1']
  run = report.load_run(workdir)
  assert run.name == 'vanilla_s1' and run.method == 'vanilla' and run.seed == 1
  assert run.heads == HEADS and run.selection_head == 'fused'
  assert run.records == metrics.read_metrics(workdir)
  epochs, values = run.series('accuracy/fused', 'val')
  np.testing.assert_array_equal(epochs, [1, 2])
  assert values.shape == (2,)


def test_not_a_run_is_named(tmp_path):
  with pytest.raises(report.NotARunError, match=r"is not an mmjax run directory: it has no config\.json"):
    report.load_run(str(tmp_path))
  with pytest.raises(report.NotARunError, match='it does not exist'):
    report.load_run(str(tmp_path / 'missing'))


def test_run_without_metrics_is_named(tmp_path, runs):
  shutil.copy(os.path.join(runs['vanilla_s0'][0], 'config.json'), tmp_path / 'config.json')
  with pytest.raises(report.NoMetricsError, match=r'has no metrics yet: metrics\.jsonl is missing'):
    report.load_run(str(tmp_path))


@pytest.mark.parametrize('make, match', [
    (lambda p: None, 'has no config.json'),
    (lambda p: (p / 'config.json').write_text('{}'), 'has no metrics yet'),
    (lambda p: [(p / 'config.json').write_text('{}'),
                (p / 'metrics.jsonl').write_text('{"step": 1, "epoch": 1, "split": "val"}\n'),
                (p / 'summary.json').write_text('[1]')],
     'summary.json holds a JSON list, not a run summary; delete it.'),
])
def test_command_line_errors(tmp_path, capsys, make, match):
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  make(run_dir)
  with pytest.raises(SystemExit) as exit_info:
    report.main([str(run_dir), '--out', str(tmp_path / 'out')])
  assert exit_info.value.code == 2
  assert match in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


# ----- the comparison table ----------------------------------------------------------------------


def test_summary_selects_the_earliest_best_val_epoch_and_handles_partial_runs():
  def rec(split, epoch, **acc):
    return {'step': epoch * 10, 'epoch': epoch, 'split': split,
            **{f'accuracy/{h}': v for h, v in acc.items()}}
  records = [rec('val', 1, fused=0.5, a=0.4), rec('test', 1, fused=0.45, a=0.3),
             rec('val', 2, fused=0.7, a=0.6), rec('test', 2, fused=0.65, a=0.5),
             rec('val', 3, fused=0.7, a=0.9), rec('test', 3, fused=0.2, a=0.8),
             rec('val', 4, fused=0.1, a=0.2)]  # epoch 4's test record is not written yet
  summary = metrics.summarize(records, ('fused', 'a'), 'fused')
  assert summary['best_epoch'] == 2  # ties go to the earliest epoch
  assert summary['best_val'] == {'fused': 0.7, 'a': 0.9}
  assert summary['test_at_best'] == {'fused': 0.65, 'a': 0.5}
  assert summary['final_test'] == {'fused': 0.2, 'a': 0.8}
  assert summary['epochs'] == 4
  partial = metrics.summarize(records[:1], ('fused', 'a', 'b'), 'fused')
  assert math.isnan(partial['best_val']['b']) and math.isnan(partial['final_test']['fused'])
  assert metrics.summarize([], ('fused',), 'fused') == {}


def test_train_summary_matches_the_records(runs):
  for workdir, summary in runs.values():
    run = report.load_run(workdir)
    assert summary['best_epoch'] == max(
        metrics.select(run.records, 'val'),
        key=lambda r: (r['accuracy/fused'], -r['epoch']))['epoch']
    assert summary['workdir'] == workdir


def test_table_groups_seeds_as_mean_and_std(runs):
  loaded = report.load_runs([runs[k][0] for k in ('vanilla_s0', 'gblend', 'vanilla_s1')])
  table = report.comparison_table(loaded)
  assert table.heads == HEADS
  assert [g['runs'] for g in table.groups] == [['vanilla_s0', 'vanilla_s1'], ['gblend']]
  vanilla, gblend = table.groups
  assert vanilla['seeds'] == [0, 1] and vanilla['method'] == 'vanilla'
  for kind in ('best_val', 'test_at_best'):
    for head in HEADS:
      values = [runs[k][1][kind][head] for k in ('vanilla_s0', 'vanilla_s1')]
      mean, std, n = vanilla[f'{kind}/{head}']
      assert n == 2 and mean == pytest.approx(np.mean(values))
      assert std == pytest.approx(np.std(values, ddof=1))
      assert gblend[f'{kind}/{head}'] == (runs['gblend'][1][kind][head], 0.0, 1)

  markdown = table.to_markdown()
  lines = markdown.strip().splitlines()
  assert len(lines) == 4 and lines[0].startswith('| group | method | config | seeds | epochs |')
  assert lines[0].count('|') == lines[2].count('|') == 5 + 2 * len(HEADS) + 1
  mean, std, _ = vanilla['test_at_best/fused']
  assert f'{mean:.4f} ± {std:.4f}' in lines[2] and '| 0, 1 |' in lines[2]
  assert '±' not in lines[3] and f"{runs['gblend'][1]['best_val']['a']:.4f}" in lines[3]

  rows = list(csv.DictReader(io.StringIO(table.to_csv())))
  assert [r['runs'] for r in rows] == ['vanilla_s0 vanilla_s1', 'gblend']
  assert float(rows[0]['test_at_best/fused/mean']) == pytest.approx(mean)
  assert float(rows[0]['test_at_best/fused/std']) == pytest.approx(std)
  assert rows[0]['test_at_best/fused/n'] == '2'
  per_run = list(csv.DictReader(io.StringIO(table.runs_to_csv())))
  assert [(r['run'], r['seed']) for r in per_run] == [('vanilla_s0', '0'), ('gblend', '0'),
                                                       ('vanilla_s1', '1')]
  assert float(per_run[1]['best_val/b']) == pytest.approx(runs['gblend'][1]['best_val']['b'])


def test_runs_with_the_same_config_and_seed_count_as_one(runs, tmp_path):
  """Item 14: a copy of a run (same config, same seed) is not a second seed."""
  shutil.copytree(runs['vanilla_s0'][0], tmp_path / 'again')
  config = json.loads((tmp_path / 'again' / 'config.json').read_text())
  config.update(progress_bar=not config['progress_bar'], log_every_steps=7)  # not run-defining
  (tmp_path / 'again' / 'config.json').write_text(json.dumps(config))
  loaded = report.load_runs([runs['vanilla_s0'][0], str(tmp_path / 'again'), runs['vanilla_s1'][0]])
  table = report.comparison_table(loaded)
  (group,) = table.groups
  assert group['seeds'] == [0, 1] and group['repeats'] == {0: [loaded[0].name, loaded[1].name]}
  for head in HEADS:
    values = [runs[k][1]['test_at_best'][head] for k in ('vanilla_s0', 'vanilla_s1')]
    mean, std, n = group[f'test_at_best/{head}']
    assert n == 2 and mean == pytest.approx(np.mean(values))  # not (2 * s0 + s1) / 3
    assert std == pytest.approx(np.std(values, ddof=1))
  note = (f'{loaded[0].name} and {loaded[1].name} have the same config and seed 0: counted as one run '
          '(identical results).')
  assert table.notes == [note]
  markdown = table.to_markdown()
  assert '| 0 (2 runs), 1 |' in markdown and markdown.endswith(f'\nNote: {note}\n')

  alone = report.comparison_table(report.load_runs([runs['vanilla_s0'][0], str(tmp_path / 'again')]))
  mean, std, n = alone.groups[0]['best_val/fused']
  assert (mean, std, n) == (runs['vanilla_s0'][1]['best_val']['fused'], 0.0, 1)
  assert '±' not in alone.to_markdown().splitlines()[2]


def test_group_label_names_what_differs(runs, tmp_path):
  other = tmp_path / 'lr'
  shutil.copytree(runs['vanilla_s0'][0], other)
  config = json.loads((other / 'config.json').read_text())
  config['optimizer']['learning_rate'] = 0.5
  (other / 'config.json').write_text(json.dumps(config))
  table = report.comparison_table(report.load_runs([runs['vanilla_s0'][0], str(other)]))
  assert [g['config'] for g in table.groups] == ['optimizer.learning_rate=0.001',
                                                 'optimizer.learning_rate=0.5']


def _partial_run(tmp_path, runs):
  """The vanilla run cut off after epoch 2's val record, before its test record."""
  workdir = tmp_path / 'partial'
  workdir.mkdir()
  shutil.copy(os.path.join(runs['vanilla_s0'][0], 'config.json'), workdir / 'config.json')
  records = metrics.read_metrics(runs['vanilla_s0'][0])
  records = [r for r in records if not (r['epoch'] == 2 and r['split'] == 'test')]
  for r in records:
    if r['split'] == 'val':
      r['accuracy/fused'] = 0.3 + 0.2 * r['epoch']  # epoch 2 is the best
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  return report.load_run(str(workdir))


def test_partial_run_is_reported_as_far_as_it_goes(tmp_path, runs):
  run = _partial_run(tmp_path, runs)
  table = report.comparison_table(run)
  row = table.runs[0]
  assert row['best_epoch'] == 2 and row['best_val/fused'] == pytest.approx(0.7)
  assert math.isnan(row['test_at_best/fused'])
  assert '| — |' in table.to_markdown()
  assert list(csv.DictReader(io.StringIO(table.to_csv())))[0]['test_at_best/fused/mean'] == ''
  fig = report.plot_accuracy(run)
  epochs = {line.get_label(): list(line.get_xdata()) for line in fig.axes[0].get_lines()}
  assert epochs['fused · val'] == [1, 2] and epochs['fused · test'] == [1]


# ----- plots -------------------------------------------------------------------------------------


@pytest.mark.parametrize('plot, metric', [(report.plot_accuracy, 'accuracy'), (report.plot_loss, 'loss')])
def test_per_head_plots(runs, plot, metric):
  run = report.load_run(runs['gblend'][0])
  fig = plot(run)
  assert isinstance(fig, Figure) and len(fig.axes) == 1
  ax = fig.axes[0]
  labels = [f'{h} · {s}' for h in HEADS for s in ('train', 'val', 'test')]
  assert [line.get_label() for line in ax.get_lines()] == labels
  assert _legend(fig) == labels
  assert ax.get_xlabel() == 'epoch' and ax.get_ylabel() == metric
  for line in ax.get_lines():
    head, split = line.get_label().split(' · ')
    epochs, values = run.series(f'{metric}/{head}', split)
    np.testing.assert_array_equal(line.get_xdata(), epochs)
    np.testing.assert_array_equal(line.get_ydata(), values)
    assert line.get_linestyle() == {'train': ':', 'val': '--', 'test': '-'}[split]


def test_plots_compare_runs_on_a_given_axes(runs):
  loaded = report.load_runs([runs['vanilla_s0'][0], runs['gblend'][0]])
  fig = Figure()
  left, right = fig.subplots(1, 2)
  assert report.plot_accuracy(loaded, splits=('test',), ax=right) is fig
  assert not left.get_lines()
  assert [line.get_label() for line in right.get_lines()] == [
      f'{run} · {h} · test' for run in ('vanilla_s0', 'gblend') for h in HEADS]
  assert {line.get_marker() for line in right.get_lines()} == {'o', 's'}


def test_gblend_plots(runs):
  run = report.load_run(runs['gblend'][0])
  estimates = [r for r in metrics.select(run.records, 'train') if 'gblend/weight/fused' in r]
  for plot, key, ylabel in ((report.plot_gblend_weights, 'weight', 'weight w_i'),
                            (report.plot_ogr, 'ogr', 'OGR')):
    fig = plot(run)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == list(HEADS) == _legend(fig)
    assert ax.get_ylabel() == ylabel
    for line in ax.get_lines():
      assert line.get_drawstyle() == 'steps-post'
      np.testing.assert_array_equal(line.get_xdata(), [r['epoch'] for r in estimates])
      np.testing.assert_allclose(line.get_ydata(),
                                 [r[f'gblend/{key}/{line.get_label()}'] for r in estimates])
  assert estimates[0]['epoch'] == 0  # the estimate made before the first epoch is drawn


def test_greedy_plots(runs):
  run = report.load_run(runs['greedy'][0])
  train_records = metrics.select(run.records, 'train')
  fig = report.plot_greedy_speed(run)
  ax = fig.axes[0]
  (speed,) = _data_lines(ax)
  assert speed.get_label() == 'd_speed'
  np.testing.assert_allclose(speed.get_ydata(), [r['greedy/d_speed'] for r in train_records])
  alpha = run.config['method']['alpha']
  thresholds = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ':')
  assert thresholds == pytest.approx([-alpha, alpha])
  windows = report.rebalance_windows(run)
  assert set(windows) == {'a', 'b'}
  counts = {m: train_records[-1][f'greedy/rebalance/{m}'] for m in windows}
  for m, spans in windows.items():
    assert bool(spans) == (counts[m] > 0)  # guided mode re-balances from epoch 2 on
  assert len(ax.patches) == sum(len(s) for s in windows.values())
  assert [t for t in _legend(fig) if t.startswith('re-balancing')] == [
      f're-balancing {m}' for m in windows if windows[m]]

  fig = report.plot_utilization(run)
  ax = fig.axes[0]
  labels = [f'{k} · {s}' for s in ('val', 'test') for k in ('u/a', 'u/b', 'd_util')]
  assert [line.get_label() for line in _data_lines(ax)] == labels == _legend(fig)
  for line in _data_lines(ax):
    key, split = line.get_label().split(' · ')
    np.testing.assert_allclose(line.get_ydata(), run.series(f'greedy/{key}', split)[1])


def test_rebalance_windows_from_count_increments(runs):
  run = report.load_run(runs['greedy'][0])
  counts = [(1, 0, 0), (2, 6, 0), (3, 13, 0), (4, 13, 2), (5, 13, 2), (6, 20, 2)]
  records = [{'step': e, 'epoch': e, 'split': 'train', 'greedy/rebalance/a': a,
              'greedy/rebalance/b': b} for e, a, b in counts]
  synthetic = report.Run(workdir=run.workdir, name='w', config=run.config, records=records)
  assert report.rebalance_windows(synthetic) == {'a': [(1, 3), (5, 6)], 'b': [(3, 4)]}


@pytest.mark.parametrize('plot, match', [
    (report.plot_gblend_weights, r'no gblend/weight/\* metrics in vanilla_s0 \(method vanilla\)'),
    (report.plot_ogr, r'no gblend/ogr/\*'),
    (report.plot_greedy_speed, r'no greedy/d_speed\* or greedy/speed_spread\*'),
    (report.plot_utilization, r'no greedy/u/\*'),
])
def test_plot_without_its_metrics_is_named(runs, plot, match):
  with pytest.raises(report.MetricsNotFoundError, match=match):
    plot(report.load_run(runs['vanilla_s0'][0]))


# ----- the command line --------------------------------------------------------------------------


def test_command_line_writes_tables_and_pngs(runs, tmp_path, capsys):
  out = tmp_path / 'report'
  names = ('vanilla_s0', 'vanilla_s1', 'gblend', 'greedy')
  assert report.main([runs[n][0] for n in names] + ['--out', str(out), '--dpi', '50']) == 0
  captured = capsys.readouterr()
  assert '| vanilla_s0 + vanilla_s1 | vanilla |' in captured.out
  assert captured.err == ''  # each summary.json lists only the plots its run has metrics for
  expected = {'vanilla_s0': ['accuracy', 'loss'], 'vanilla_s1': ['accuracy', 'loss'],
              'gblend': ['accuracy', 'loss', 'gblend_weights', 'gblend_ogr'],
              'greedy': ['accuracy', 'loss', 'greedy_speed', 'greedy_utilization']}
  for name, plots in expected.items():
    assert sorted(os.listdir(out / name)) == sorted(f'{p}.png' for p in plots)
    for p in plots:
      path = out / name / f'{p}.png'
      assert path.read_bytes()[:8] == PNG_MAGIC
      image = imread(path)
      assert image.shape == (200, 320, 4) and image.std() > 0.05  # 6.4x4 in at 50 dpi, not blank
  text = (out / 'report.md').read_text()
  assert '![greedy_speed.png](greedy/greedy_speed.png)' in text and '## Skipped plots' not in text
  assert (out / 'comparison.md').read_text() in text
  rows = list(csv.DictReader(io.StringIO((out / 'comparison.csv').read_text())))
  assert [r['group'] for r in rows] == ['vanilla_s0 + vanilla_s1', 'gblend', 'greedy']
  assert len(list(csv.DictReader(io.StringIO((out / 'runs.csv').read_text())))) == 4


def test_runs_with_the_same_base_name_get_distinct_names(runs, tmp_path):
  for parent in ('x', 'y'):
    shutil.copytree(runs['vanilla_s0'][0], tmp_path / parent / 'run')
  loaded = report.load_runs([str(tmp_path / 'x' / 'run'), str(tmp_path / 'y' / 'run')])
  assert [r.name for r in loaded] == ['x_run', 'y_run']


# ----- summary.json ------------------------------------------------------------------------------


def test_summary_json_describes_each_run(runs):
  expected_plots = {'vanilla_s0': ['accuracy', 'loss'],
                    'gblend': ['accuracy', 'loss', 'gblend_weights', 'gblend_ogr'],
                    'greedy': ['accuracy', 'loss', 'greedy_speed', 'greedy_utilization']}
  for name, plots in expected_plots.items():
    workdir, returned = runs[name]
    with open(os.path.join(workdir, 'summary.json'), encoding='utf-8') as f:
      summary = json.load(f)
    assert summary == {k: v for k, v in returned.items() if k != 'workdir'}
    assert summary['plots'] == plots and summary['method'] == name.split('_')[0]
    assert summary['heads'] == list(HEADS) and summary['modalities'] == ['a', 'b']
    assert summary['evals'] == (['utilization'] if name == 'greedy' else [])
    assert summary['finished'] and summary['epochs'] == summary['num_epochs'] == 2
    records = metrics.read_metrics(workdir)
    assert summary['best_val'] == metrics.summarize(records, HEADS, 'fused')['best_val']
    assert report.load_run(workdir).summary == summary


def test_report_takes_selection_head_and_plots_from_summary_json(runs, tmp_path):
  workdir = tmp_path / 'edited'
  shutil.copytree(runs['vanilla_s0'][0], workdir)
  summary = json.loads((workdir / 'summary.json').read_text())
  summary.update(selection_head='a', plots=['loss', 'not_a_plot'])
  (workdir / 'summary.json').write_text(json.dumps(summary))
  run = report.load_run(workdir)
  assert run.selection_head == 'a'
  val = metrics.select(run.records, 'val')
  best = max(val, key=lambda r: (r['accuracy/a'], -r['epoch']))['epoch']
  assert report.comparison_table(run).runs[0]['best_epoch'] == best
  result = report.write_report([run], str(tmp_path / 'out'), dpi=20)
  assert sorted(os.listdir(tmp_path / 'out' / 'edited')) == ['loss.png']
  assert result['skipped'] == ["edited/not_a_plot.png skipped: no report plot named 'not_a_plot' "
                               'is registered (import the module that registers it).']


def test_run_without_summary_json_gets_every_plot_its_metrics_allow(runs, tmp_path):
  workdir = tmp_path / 'old'
  shutil.copytree(runs['vanilla_s0'][0], workdir)
  (workdir / 'summary.json').unlink()
  run = report.load_run(workdir)
  assert run.summary is None and run.selection_head == 'fused'
  result = report.write_report([run], str(tmp_path / 'out'), dpi=20)
  assert sorted(os.listdir(tmp_path / 'out' / 'old')) == ['accuracy.png', 'loss.png']
  assert 'old/gblend_weights.png skipped: no gblend/weight/*' in ' '.join(result['skipped'])
