"""The comparison table: best-val and test-at-best accuracy per head, seeds grouped."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mmjax import config_lib, metrics
from mmjax.report.runs import Run, as_list, head_order


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
  runs = as_list(runs)
  heads = head_order(h for r in runs for h in r.heads)
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
