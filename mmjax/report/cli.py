"""The report command: tables, plots and ``report.md`` from run directories.

    python -m mmjax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from mmjax.report.plots import PLOT_FUNCTIONS, MetricsNotFoundError
from mmjax.report.runs import Run, load_runs
from mmjax.report.tables import comparison_table


def plot_names(run: Run) -> list[str]:
  """The plots of ``run``: those its ``summary.json`` lists; without one, every registered plot
  (those whose metrics the run lacks are skipped)."""
  if run.summary and 'plots' in run.summary:
    return list(run.summary['plots'])
  return list(PLOT_FUNCTIONS)


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
    for name in plot_names(run):
      filename = f'{name}.png'
      if name not in PLOT_FUNCTIONS:
        skipped.append(f'{run.name}/{filename} skipped: no report plot named {name!r} is '
                       'registered (import the module that registers it).')
        continue
      try:
        fig = PLOT_FUNCTIONS[name](run)
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
  except ValueError as e:  # NotARunError, NoMetricsError, a damaged metrics.jsonl or summary.json
    parser.error(str(e))
  result = write_report(runs, args.out, dpi=args.dpi)
  print(result['table'].to_markdown())
  for note in result['skipped']:
    print(note, file=sys.stderr)
  print(f"wrote {len(result['files'])} files to {args.out}")
  return 0
