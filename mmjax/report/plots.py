"""Plots of one or more runs over epochs; each takes a run or several, draws on ``ax`` when
given and returns the :class:`matplotlib.figure.Figure` (built without ``pyplot``).

:data:`PLOT_FUNCTIONS` names them; a run's ``summary.json`` lists the names of the plots for
its metrics (its method's and evaluators' ``PLOTS``), and :func:`register_plot` adds one.
"""

from __future__ import annotations

from typing import Callable, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmjax.report.runs import Run, as_list, head_order

SPLIT_STYLES = {'train': ':', 'val': '--', 'test': '-'}
RUN_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')
FIGSIZE = (6.4, 4.0)


class MetricsNotFoundError(ValueError):
  """None of the given runs logged the metrics a plot needs."""


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
  if ax is not None:
    return ax.figure, ax
  fig = Figure(figsize=FIGSIZE, layout='constrained')
  return fig, fig.add_subplot()


def _label(runs: Sequence[Run], run: Run, *parts: str) -> str:
  return ' · '.join(((run.name,) if len(runs) > 1 else ()) + parts)


def _head_colors(runs: Sequence[Run]) -> dict[str, str]:
  """One colour per head over all ``runs``, the same in every per-head plot."""
  return {h: f'C{i}' for i, h in enumerate(head_order(h for r in runs for h in r.heads))}


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
  runs = _require(as_list(runs), f'{metric}/', 'the run has no epoch finished yet')
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
  runs = _require(as_list(runs), prefix, what)
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


def plot_ogm_ge_coefficients(runs: Run | Sequence[Run], *, ax: Axes | None = None) -> Figure:
  """OGM-GE's modulation coefficient ``k^u`` per modality over epochs, epoch means of the
  per-step values (``ogm_ge/coefficient/<m>``, Peng et al. 2022, Eq. 10)."""
  return _plot_train_keys(runs, 'ogm_ge/coefficient/', 'only OGM-GE runs (method=ogm_ge) log '
                          'modulation coefficients', 'OGM-GE coefficients', 'k (epoch mean)', ax)


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
  runs = _require(as_list(runs), SPEED_KEYS,
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
  runs = _require(as_list(runs), ('greedy/u/', *UTILIZATION_KEYS),
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


#: Plot name -> function; the report writes plot ``NAME`` of a run as ``<run>/NAME.png``.
PLOT_FUNCTIONS: dict[str, Callable[..., Figure]] = {
    'accuracy': plot_accuracy,
    'loss': plot_loss,
    'gblend_weights': plot_gblend_weights,
    'gblend_ogr': plot_ogr,
    'greedy_speed': plot_greedy_speed,
    'greedy_utilization': plot_utilization,
    'ogm_ge_coefficients': plot_ogm_ge_coefficients,
}


def register_plot(name: str) -> Callable[[Callable[..., Figure]], Callable[..., Figure]]:
  """Decorator: makes ``fn(runs, *, ax=None) -> Figure`` the report plot ``name`` (a method or
  evaluator lists ``name`` in its ``PLOTS``). It raises :class:`MetricsNotFoundError` for runs
  without its metrics."""
  def add(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    if PLOT_FUNCTIONS.get(name, fn) is not fn:
      raise ValueError(f'report plot {name!r} is taken by {PLOT_FUNCTIONS[name].__qualname__}.')
    PLOT_FUNCTIONS[name] = fn
    return fn
  return add
