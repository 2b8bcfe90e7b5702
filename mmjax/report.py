"""Tables and plots from one or more run directories (``config.json`` + ``metrics.jsonl``).

    python -m mmjax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR

writes into ``REPORT_DIR``:

- ``comparison.md`` and ``comparison.csv``: best-val accuracy and test accuracy at the best-val
  epoch per head, one row per group of runs whose ``config.json`` differ only in ``seed`` and
  in settings that do not change results (progress bar, logging, checkpointing)
  (mean ± sample standard deviation over the seeds; two runs with the same config and seed are
  one run, counted once, and a note says so); ``runs.csv``: the same numbers per run;
- ``<run>/accuracy.png`` and ``<run>/loss.png``: per head over epochs, train, val and test;
- ``<run>/gblend_weights.png`` and ``<run>/gblend_ogr.png``: G-Blend's blend weights and
  overfitting-to-generalization ratios over epochs (G-Blend runs);
- ``<run>/greedy_speed.png``: the conditional-learning-speed difference ``d_speed`` with the
  re-balancing windows shaded, and ``<run>/greedy_utilization.png``: the conditional
  utilization rates and ``d_util`` on val and test (greedy runs);
- ``report.md``: the table, the plots and a note for every plot skipped because its metrics
  are absent from a run.

The functions are importable for notebooks: :func:`load_run`, :func:`comparison_table` and the
``plot_*`` functions, each of which takes one run or several, draws on ``ax`` when given and
returns the :class:`matplotlib.figure.Figure`. Figures are built without ``pyplot``, so the
module never changes the global matplotlib backend; files are rendered with Agg.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmjax import config_lib, methods, metrics, train

SPLIT_STYLES = {'train': ':', 'val': '--', 'test': '-'}
RUN_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')
FIGSIZE = (6.4, 4.0)


class NotARunError(ValueError):
  """A directory that holds no ``config.json``."""


class NoMetricsError(ValueError):
  """A run directory whose ``metrics.jsonl`` is missing or empty."""


class MetricsNotFoundError(ValueError):
  """None of the given runs logged the metrics a plot needs."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run directory read from disk.

  Attributes:
    workdir: the run directory.
    name: a short label for tables and legends (by default the directory's base name).
    config: the resolved config (``config.json``).
    records: the ``metrics.jsonl`` records in the order written.
  """
  workdir: str
  name: str
  config: dict[str, Any]
  records: list[dict[str, Any]]

  @property
  def method(self) -> str:
    return self.config['method']['name']

  @property
  def seed(self) -> int:
    return self.config['seed']

  @property
  def heads(self) -> tuple[str, ...]:
    """The heads with an accuracy in the records: ``fused`` first, then the modalities."""
    return _head_order(k.split('/', 1)[1] for r in self.records for k in r
                       if k.startswith('accuracy/'))

  @property
  def selection_head(self) -> str:
    """The head whose val accuracy selects the best epoch, as the run's method selects it."""
    heads = self.heads
    modalities = tuple(h for h in heads if h != 'fused')
    return methods.build_method(self.config['method'], heads, modalities).selection_head

  def series(self, key: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` over the records of ``split`` that hold it, in order."""
    rows = [(r['epoch'], r[key]) for r in metrics.select(self.records, split) if key in r]
    epochs = np.array([e for e, _ in rows], dtype=float)
    return epochs, np.array([v for _, v in rows], dtype=float)

  def keys(self, prefix: str, split: str | None = None) -> list[str]:
    """The metric keys starting with ``prefix`` (in ``split``'s records when given).

    Sorted by what follows the prefix, ``fused`` first.
    """
    records = self.records if split is None else metrics.select(self.records, split)
    found = {k[len(prefix):] for r in records for k in r if k.startswith(prefix)}
    return [prefix + name for name in _head_order(found)]


def _head_order(names: Iterable[str]) -> tuple[str, ...]:
  """Distinct head (or modality) names, ``fused`` first, then alphabetical."""
  return tuple(sorted(set(names), key=lambda h: (h != 'fused', h)))


def load_run(workdir: str | os.PathLike, name: str | None = None) -> Run:
  """Reads a run directory; raises a clear error for a directory that is not a run or has no metrics.

  A partial run (still training, or stopped) is read as far as it goes.
  """
  workdir = os.fspath(workdir)
  config_path = os.path.join(workdir, train.CONFIG_FILE)
  if not os.path.isfile(config_path):
    what = 'does not exist' if not os.path.exists(workdir) else f'has no {train.CONFIG_FILE}'
    raise NotARunError(
        f'{workdir!r} is not an mmjax run directory: it {what}. Pass the --workdir of a run '
        f'(python -m mmjax.main --config ... --workdir DIR).')
  with open(config_path, encoding='utf-8') as f:
    config = json.load(f)
  records = metrics.read_metrics(workdir)
  if not records:
    raise NoMetricsError(
        f'run {workdir!r} has no metrics yet: {metrics.METRICS_FILE} is missing or empty. A run '
        f'writes its first records when its first epoch ends (or G-Blend its first estimate).')
  return Run(workdir=workdir, name=name or os.path.basename(os.path.normpath(workdir)),
             config=config, records=records)


def load_runs(workdirs: Sequence[str | os.PathLike]) -> list[Run]:
  """Reads several runs, naming each by its path relative to the directories' common parent."""
  paths = [os.path.normpath(os.path.abspath(w)) for w in workdirs]
  if len(paths) > 1 and len(set(paths)) == len(paths):
    common = os.path.commonpath(paths)
    names = [os.path.relpath(p, common).replace(os.sep, '_') for p in paths]
  else:
    names = [os.path.basename(p) for p in paths]
  return [load_run(w, n) for w, n in zip(workdirs, names)]


# ----- the comparison table --------------------------------------------------------------------


def _flatten(config: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """A nested config as one level of dotted keys."""
  out = {}
  for key, value in config.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def _run_defining(config: Mapping[str, Any]) -> dict[str, Any]:
  """The config without ``seed`` and the settings that do not change results
  (:data:`mmjax.config_lib.RESUMABLE_KEYS`: progress bar, logging, checkpointing, ...)."""
  return {k: v for k, v in config.items() if k != 'seed' and k not in config_lib.RESUMABLE_KEYS}


def group_runs(runs: Sequence[Run]) -> list[list[Run]]:
  """Groups runs whose configs differ only in ``seed`` (and settings that do not change
  results), in the order of first appearance."""
  groups: dict[str, list[Run]] = {}
  for run in runs:
    key = json.dumps(_run_defining(run.config), sort_keys=True)
    groups.setdefault(key, []).append(run)
  return list(groups.values())


def _group_labels(groups: Sequence[Sequence[Run]]) -> list[str]:
  """What tells the groups apart: the config keys whose values differ between them.

  A key counts when the groups that have it (a method's or a model's own options exist only
  in its groups) hold different values; ``seed`` (within a group) and ``method.name`` (a column
  of its own) are left out.
  """
  flat = [_flatten(_run_defining(g[0].config)) for g in groups]
  keys = sorted(set().union(*flat))
  differing = [k for k in keys if k != 'method.name'
               and len({json.dumps(f[k]) for f in flat if k in f}) > 1]
  labels = []
  for f in flat:
    parts = [f'{k}={json.dumps(f[k]) if not isinstance(f[k], str) else f[k]}'
             for k in differing if k in f]
    labels.append(', '.join(parts))
  return labels


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; 0 for a single value) over the finite values."""
  finite = [v for v in values if math.isfinite(v)]
  if not finite:
    return float('nan'), float('nan')
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  return float(np.mean(finite)), std


@dataclasses.dataclass(frozen=True)
class ComparisonTable:
  """The comparison of several runs: one row per seed group, and one per run.

  Attributes:
    heads: the heads in the columns (the union over the runs, ``fused`` first).
    groups: per group, a dict with ``group``, ``method``, ``config``, ``runs``, ``seeds`` (each
      seed once), ``repeats`` (seed -> the names of the runs that share it, where several do),
      ``repeat_spread`` (seed -> the largest accuracy difference between those runs), ``epochs``
      and ``best_val/<head>`` / ``test_at_best/<head>`` as ``(mean, std, n)`` over the seeds: runs
      with the same config and seed count as one seed, with their mean.
    runs: per run, a dict with ``run``, ``method``, ``seed``, ``epochs``, ``best_epoch``,
      ``selection_head`` and ``best_val/<head>`` / ``test_at_best/<head>`` floats.
  """
  heads: tuple[str, ...]
  groups: list[dict[str, Any]]
  runs: list[dict[str, Any]]

  @property
  def notes(self) -> list[str]:
    """One sentence per set of runs with the same config and seed, which count as one."""
    notes = []
    for g in self.groups:
      for seed, names in g['repeats'].items():
        spread = g['repeat_spread'][seed]
        agree = ('identical results' if spread == 0 else
                 f'accuracies differ by up to {spread:.4f}; their mean is used')
        notes.append(f"{' and '.join(names)} have the same config and seed {seed}: counted as "
                     f'one run ({agree}).')
    return notes

  def to_markdown(self, digits: int = 4) -> str:
    """A Markdown table: per group and head, ``mean ± std`` (``n`` seeds), or ``—`` when absent.

    Runs with the same config and seed count as one seed (the seeds cell says ``0 (2 runs)``),
    and a note under the table names them.
    """
    def cell(stats):
      mean, std, n = stats
      if not math.isfinite(mean):
        return '—'
      return f'{mean:.{digits}f}' if n == 1 else f'{mean:.{digits}f} ± {std:.{digits}f}'
    header = ['group', 'method', 'config', 'seeds', 'epochs']
    header += [f'{kind} {h}' for kind in ('best val', 'test @best') for h in self.heads]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for g in self.groups:
      seeds = ', '.join(f"{s} ({len(g['repeats'][s])} runs)" if s in g['repeats'] else str(s)
                        for s in g['seeds'])
      row = [g['group'], g['method'], g['config'] or '—', seeds,
             ', '.join(map(str, sorted(set(g['epochs']))))]
      row += [cell(g[f'{kind}/{h}']) for kind in ('best_val', 'test_at_best') for h in self.heads]
      lines.append('| ' + ' | '.join(str(c).replace('|', '\\|') for c in row) + ' |')
    notes = [''] + [f'Note: {n}' for n in self.notes] if self.notes else []
    return '\n'.join(lines + notes) + '\n'

  def to_csv(self) -> str:
    """One row per group: ``<kind>/<head>/mean``, ``/std`` and ``/n`` columns (empty when absent)."""
    columns = ['group', 'method', 'config', 'runs', 'seeds']
    columns += [f'{kind}/{h}/{s}' for kind in ('best_val', 'test_at_best') for h in self.heads
                for s in ('mean', 'std', 'n')]
    rows = []
    for g in self.groups:
      row = {'group': g['group'], 'method': g['method'], 'config': g['config'],
             'runs': ' '.join(g['runs']), 'seeds': ' '.join(map(str, g['seeds']))}
      for kind in ('best_val', 'test_at_best'):
        for h in self.heads:
          mean, std, n = g[f'{kind}/{h}']
          finite = math.isfinite(mean)
          row.update({f'{kind}/{h}/mean': mean if finite else '', f'{kind}/{h}/std': std if finite else '',
                      f'{kind}/{h}/n': n})
      rows.append(row)
    return _csv(columns, rows)

  def runs_to_csv(self) -> str:
    """One row per run: its best epoch and the accuracies (empty when absent)."""
    columns = ['run', 'workdir', 'method', 'seed', 'epochs', 'best_epoch', 'selection_head']
    columns += [f'{kind}/{h}' for kind in ('best_val', 'test_at_best') for h in self.heads]
    rows = [{k: ('' if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in self.runs]
    return _csv(columns, rows)


def _csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return buffer.getvalue()


def _group_name(group: Sequence[Run], runs: Sequence[Run]) -> str:
  """The folder the group's runs share and the other runs do not, else the runs' names."""
  if len(group) == 1:
    return group[0].name
  paths = [os.path.abspath(r.workdir) for r in group]
  shared, everyone = os.path.commonpath(paths), os.path.commonpath([os.path.abspath(r.workdir) for r in runs])
  if shared != everyone and shared not in paths:
    return os.path.relpath(shared, everyone).replace(os.sep, '_')
  return ' + '.join(r.name for r in group) if len(group) <= 2 else f'{group[0].name} + {len(group) - 1} more'


def comparison_table(runs: Run | Sequence[Run]) -> ComparisonTable:
  """Best-val and test-at-best-val accuracy per head for ``runs``, seeds grouped as mean ± std."""
  runs = _as_list(runs)
  heads = _head_order(h for r in runs for h in r.heads)
  per_run = {}
  for run in runs:
    summary = metrics.summarize(run.records, run.heads, run.selection_head)
    nan = float('nan')
    row = {'run': run.name, 'workdir': run.workdir, 'method': run.method, 'seed': run.seed,
           'epochs': summary.get('epochs', 0), 'best_epoch': summary.get('best_epoch', ''),
           'selection_head': run.selection_head}
    for kind in ('best_val', 'test_at_best'):
      row.update({f'{kind}/{h}': summary.get(kind, {}).get(h, nan) for h in heads})
    per_run[id(run)] = row
  groups = group_runs(runs)
  group_rows = []
  for group, label in zip(groups, _group_labels(groups)):
    rows = [per_run[id(r)] for r in group]
    by_seed: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
      by_seed.setdefault(row['seed'], []).append(row)
    repeats = {seed: [r['run'] for r in same] for seed, same in by_seed.items() if len(same) > 1}
    g = {'group': _group_name(group, runs), 'method': group[0].method, 'config': label,
         'runs': [r.name for r in group], 'seeds': list(by_seed), 'repeats': repeats,
         'repeat_spread': {}, 'epochs': [row['epochs'] for row in rows]}
    for kind in ('best_val', 'test_at_best'):
      for h in heads:
        # Runs with the same config and seed are one run: their mean is that seed's value.
        per_seed = [_mean_std([r[f'{kind}/{h}'] for r in same])[0] for same in by_seed.values()]
        g[f'{kind}/{h}'] = (*_mean_std(per_seed), sum(math.isfinite(v) for v in per_seed))
    for seed in repeats:
      spreads = [np.ptp([r[k] for r in by_seed[seed]]) for k in by_seed[seed][0]
                 if k.startswith(('best_val/', 'test_at_best/'))
                 and all(math.isfinite(r[k]) for r in by_seed[seed])]
      g['repeat_spread'][seed] = float(max(spreads, default=0.0))
    group_rows.append(g)
  return ComparisonTable(heads=heads, groups=group_rows, runs=[per_run[id(r)] for r in runs])


# ----- plots -----------------------------------------------------------------------------------


def _as_list(runs: Run | Sequence[Run]) -> list[Run]:
  return [runs] if isinstance(runs, Run) else list(runs)


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
  if ax is not None:
    return ax.figure, ax
  fig = Figure(figsize=FIGSIZE, layout='constrained')
  return fig, fig.add_subplot()


def _label(runs: Sequence[Run], run: Run, *parts: str) -> str:
  return ' · '.join(((run.name,) if len(runs) > 1 else ()) + parts)


def _head_colors(runs: Sequence[Run]) -> dict[str, str]:
  """One colour per head over all ``runs``, the same in every per-head plot."""
  return {h: f'C{i}' for i, h in enumerate(_head_order(h for r in runs for h in r.heads))}


def _title_suffix(runs: Sequence[Run]) -> str:
  """The run's name after a plot's title (on a line of its own when long), for a single run."""
  if len(runs) != 1:
    return ''
  return f'\n{runs[0].name}' if len(runs[0].name) > 24 else f': {runs[0].name}'


def _finish(fig: Figure, ax: Axes, title: str, xlabel: str, ylabel: str) -> Figure:
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize='small', ncols=2 if len(ax.get_legend_handles_labels()[1]) > 6 else 1)
  return fig


def _require(runs: Sequence[Run], prefixes: str | Sequence[str], what: str) -> list[Run]:
  """The runs that logged a key starting with one of ``prefixes``; a clear error when none did."""
  prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
  having = [r for r in runs if any(r.keys(p) for p in prefixes)]
  if not having:
    names = ', '.join(f'{r.name} (method {r.method})' for r in runs)
    raise MetricsNotFoundError(f"no {' or '.join(p + '*' for p in prefixes)} metrics in {names}: {what}.")
  return having


def _plot_per_head(runs: Run | Sequence[Run], metric: str, heads: Sequence[str] | None,
                   splits: Sequence[str], ax: Axes | None) -> Figure:
  runs = _require(_as_list(runs), f'{metric}/', 'the run has no epoch finished yet')
  fig, ax = _axes(ax)
  colors = _head_colors(runs)
  for i, run in enumerate(runs):
    for head in heads or run.heads:
      for split in splits:
        epochs, values = run.series(f'{metric}/{head}', split)
        if len(epochs):
          ax.plot(epochs, values, color=colors.get(head), linestyle=SPLIT_STYLES[split],
                  marker=RUN_MARKERS[i % len(RUN_MARKERS)] if len(runs) > 1 else None,
                  markersize=4, label=_label(runs, run, head, split))
  title = f'{metric} per head' + _title_suffix(runs)
  return _finish(fig, ax, title, 'epoch', metric)


def plot_accuracy(runs: Run | Sequence[Run], *, heads: Sequence[str] | None = None,
                  splits: Sequence[str] = ('train', 'val', 'test'), ax: Axes | None = None) -> Figure:
  """Accuracy per head over epochs: one line per run, head and split.

  Colour is the head, line style the split (train dotted, val dashed, test solid), marker the
  run when there are several. ``heads`` and ``splits`` restrict what is drawn.
  """
  return _plot_per_head(runs, 'accuracy', heads, splits, ax)


def plot_loss(runs: Run | Sequence[Run], *, heads: Sequence[str] | None = None,
              splits: Sequence[str] = ('train', 'val', 'test'), ax: Axes | None = None) -> Figure:
  """Cross-entropy loss per head over epochs, drawn as :func:`plot_accuracy` draws accuracy."""
  return _plot_per_head(runs, 'loss', heads, splits, ax)


def _plot_train_keys(runs: Run | Sequence[Run], prefix: str, what: str, title: str, ylabel: str,
                     ax: Axes | None) -> Figure:
  """One step line per run and key ``prefix<name>`` over the train records, in written order.

  Records at the same epoch (an epoch's end, then the estimate made before the next epoch) draw
  a vertical step, so a new estimate shows where it takes effect.
  """
  runs = _require(_as_list(runs), prefix, what)
  fig, ax = _axes(ax)
  colors = _head_colors(runs)
  for i, run in enumerate(runs):
    for j, key in enumerate(run.keys(prefix, 'train')):
      epochs, values = run.series(key, 'train')
      ax.plot(epochs, values, drawstyle='steps-post', color=colors.get(key[len(prefix):], f'C{j}'),
              linestyle=('-', '--', '-.', ':')[i % 4],
              marker=RUN_MARKERS[i % len(RUN_MARKERS)], markersize=4,
              label=_label(runs, run, key[len(prefix):]))
  return _finish(fig, ax, title + _title_suffix(runs), 'epoch', ylabel)


def plot_gblend_weights(runs: Run | Sequence[Run], *, ax: Axes | None = None) -> Figure:
  """G-Blend's blend weight ``w_i`` per head over epochs (``gblend/weight/<head>``)."""
  return _plot_train_keys(runs, 'gblend/weight/', 'only Gradient Blending runs (method=gblend) '
                          'log blend weights', 'G-Blend weights', 'weight w_i', ax)


def plot_ogr(runs: Run | Sequence[Run], *, ax: Axes | None = None) -> Figure:
  """G-Blend's overfitting-to-generalization ratio per head over epochs (``gblend/ogr/<head>``)."""
  return _plot_train_keys(runs, 'gblend/ogr/', 'only Gradient Blending runs (method=gblend) '
                          'log OGR', 'overfitting-to-generalization ratio', 'OGR', ax)


def rebalance_windows(run: Run) -> dict[str, list[tuple[float, float]]]:
  """Per modality, the epoch spans ``(start, end)`` in which re-balancing steps were taken.

  A span is where the cumulative ``greedy/rebalance/<modality>`` count grows between two
  consecutive train records; adjacent spans are merged.
  """
  windows = {}
  for key in run.keys('greedy/rebalance/', 'train'):
    epochs, counts = run.series(key, 'train')
    spans: list[tuple[float, float]] = []
    previous_epoch, previous_count = 0.0, 0.0
    for epoch, count in zip(epochs, counts):
      if count > previous_count:
        if spans and spans[-1][1] == previous_epoch:
          spans[-1] = (spans[-1][0], epoch)
        else:
          spans.append((previous_epoch, epoch))
      previous_epoch, previous_count = epoch, count
    windows[key[len('greedy/rebalance/'):]] = spans
  return windows


def _first_key(run: Run, keys: Sequence[str], split: str) -> str | None:
  """The first of ``keys`` that ``run`` logged in ``split``."""
  return next((k for k in keys if run.keys(k, split)), None)


#: The speed difference (two modalities) or spread (more), and the utilization-rate ones.
SPEED_KEYS = ('greedy/d_speed', 'greedy/speed_spread')
UTILIZATION_KEYS = ('greedy/d_util', 'greedy/util_spread')


def plot_greedy_speed(runs: Run | Sequence[Run], *, ax: Axes | None = None) -> Figure:
  """The conditional-learning-speed difference ``d_speed`` over epochs, re-balancing shaded.

  With more than two modalities the spread ``max_k s - min_k s`` is drawn instead. Each span
  where a branch took re-balancing steps (:func:`rebalance_windows`) is shaded in that
  modality's colour; the threshold ``alpha`` of ``|d_speed|`` is drawn dotted.
  """
  runs = _require(_as_list(runs), SPEED_KEYS,
                  'only greedy-learning runs (method=greedy) log the conditional learning speed')
  fig, ax = _axes(ax)
  colors = _head_colors(runs)
  for i, run in enumerate(runs):
    key = _first_key(run, SPEED_KEYS, 'train')
    epochs, values = run.series(key, 'train')
    ax.plot(epochs, values, color='k' if len(runs) == 1 else f'C{i}',
            marker=RUN_MARKERS[i % len(RUN_MARKERS)], markersize=4,
            label=_label(runs, run, key[len('greedy/'):]))
    for modality, spans in rebalance_windows(run).items():
      for k, (start, end) in enumerate(spans):
        ax.axvspan(start, end, color=colors.get(modality, 'C9'), alpha=0.15,
                   label=_label(runs, run, f're-balancing {modality}') if k == 0 else None)
    alpha = run.config['method'].get('alpha')
    if alpha is not None and run.config['method'].get('mode') == 'guided':
      for sign in ((1,) if key == 'greedy/speed_spread' else (1, -1)):
        ax.axhline(sign * alpha, color='0.3', linestyle=':', linewidth=1,
                   label=_label(runs, run, f'threshold alpha={alpha:g}') if sign == 1 else None)
  ax.axhline(0.0, color='0.5', linewidth=0.8)
  return _finish(fig, ax, 'conditional learning speed' +
                 _title_suffix(runs), 'epoch', 'd_speed')


def plot_utilization(runs: Run | Sequence[Run], *, splits: Sequence[str] = ('val', 'test'),
                     ax: Axes | None = None) -> Figure:
  """Conditional utilization rates ``u(others | m)`` and their difference ``d_util`` over epochs.

  Colour is the modality (``d_util``, or ``util_spread`` with more than two modalities, black),
  line style the split (val dashed, test solid).
  """
  runs = _require(_as_list(runs), ('greedy/u/', *UTILIZATION_KEYS),
                  'only greedy-learning runs (method=greedy) log conditional utilization rates')
  fig, ax = _axes(ax)
  colors = _head_colors(runs)
  for i, run in enumerate(runs):
    rates = run.keys('greedy/u/')
    for split in splits:
      for key in rates + list(UTILIZATION_KEYS):
        epochs, values = run.series(key, split)
        if len(epochs):
          ax.plot(epochs, values, linestyle=SPLIT_STYLES[split],
                  color=colors.get(key[len('greedy/u/'):], 'k') if key in rates else 'k',
                  marker=RUN_MARKERS[i % len(RUN_MARKERS)] if len(runs) > 1 else None,
                  markersize=4, label=_label(runs, run, key[len('greedy/'):], split))
  ax.axhline(0.0, color='0.5', linewidth=0.8)
  return _finish(fig, ax, 'conditional utilization rates' +
                 _title_suffix(runs), 'epoch', 'utilization rate')


#: The plots the report command writes per run: file name and function.
PLOTS: dict[str, Callable[..., Figure]] = {
    'accuracy.png': plot_accuracy,
    'loss.png': plot_loss,
    'gblend_weights.png': plot_gblend_weights,
    'gblend_ogr.png': plot_ogr,
    'greedy_speed.png': plot_greedy_speed,
    'greedy_utilization.png': plot_utilization,
}


# ----- the report command ----------------------------------------------------------------------


def write_report(runs: Sequence[Run], out: str, dpi: int = 100) -> dict[str, Any]:
  """Writes the tables, every plot each run has metrics for, and ``report.md`` into ``out``.

  Returns ``{'table': the ComparisonTable, 'files': [paths written], 'skipped': [notes for the
  plots not drawn]}``.
  """
  os.makedirs(out, exist_ok=True)
  table = comparison_table(runs)
  files = []
  for name, text in (('comparison.md', table.to_markdown()), ('comparison.csv', table.to_csv()),
                     ('runs.csv', table.runs_to_csv())):
    path = os.path.join(out, name)
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text)
    files.append(path)
  skipped = []
  sections = ['# mmjax report', '', table.to_markdown()]
  for run in runs:
    sections += [f'## {run.name}', '', f'`{run.workdir}` (method {run.method}, seed {run.seed})', '']
    os.makedirs(os.path.join(out, run.name), exist_ok=True)
    for filename, plot in PLOTS.items():
      try:
        fig = plot(run)
      except MetricsNotFoundError as e:
        skipped.append(f'{run.name}/{filename} skipped: {e}')
        continue
      path = os.path.join(out, run.name, filename)
      fig.savefig(path, dpi=dpi)
      files.append(path)
      sections.append(f'![{filename}]({run.name}/{filename})')
    sections.append('')
  if skipped:
    sections += ['## Skipped plots', ''] + [f'- {s}' for s in skipped] + ['']
  path = os.path.join(out, 'report.md')
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(sections))
  files.append(path)
  return {'table': table, 'files': files, 'skipped': skipped}


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m mmjax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR``."""
  parser = argparse.ArgumentParser(
      prog='python -m mmjax.report',
      description='Comparison tables and plots from mmjax run directories.')
  parser.add_argument('workdirs', nargs='+', metavar='RUN_DIR',
                      help='run directories (the --workdir of mmjax.main)')
  parser.add_argument('--out', required=True, help='directory to write the report into')
  parser.add_argument('--dpi', type=int, default=100, help='resolution of the PNG plots')
  args = parser.parse_args(argv)
  try:
    runs = load_runs(args.workdirs)
  except (NotARunError, NoMetricsError) as e:
    parser.error(str(e))
  result = write_report(runs, args.out, dpi=args.dpi)
  print(result['table'].to_markdown())
  for note in result['skipped']:
    print(note, file=sys.stderr)
  print(f"wrote {len(result['files'])} files to {args.out}")
  return 0


if __name__ == '__main__':
  sys.exit(main())
