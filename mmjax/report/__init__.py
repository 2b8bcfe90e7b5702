"""Tables and plots from one or more run directories (``config.json`` + ``metrics.jsonl``).

    python -m mmjax.report RUN_DIR [RUN_DIR ...] --out REPORT_DIR

writes into ``REPORT_DIR``:

- ``comparison.md`` and ``comparison.csv``: best-val accuracy and test accuracy at the best-val
  epoch per head, one row per group of runs whose ``config.json`` differ only in ``seed`` and
  in settings that do not change results (progress bar, logging, checkpointing)
  (mean ± sample standard deviation over the seeds; two runs with the same config and seed are
  one run, counted once, and a note says so); ``runs.csv``: the same numbers per run;
- per run, the plots its ``summary.json`` lists (:data:`PLOT_FUNCTIONS`; every one whose
  metrics the run has when it has no ``summary.json``):
- ``<run>/accuracy.png`` and ``<run>/loss.png``: per head over epochs, train, val and test;
- ``<run>/gblend_weights.png`` and ``<run>/gblend_ogr.png``: G-Blend's blend weights and
  overfitting-to-generalization ratios over epochs (G-Blend runs);
- ``<run>/greedy_speed.png``: the conditional-learning-speed difference ``d_speed`` with the
  re-balancing windows shaded, and ``<run>/greedy_utilization.png``: the conditional
  utilization rates and ``d_util`` on val and test (greedy runs);
- ``report.md``: the table, the plots and a note for every plot skipped because its metrics
  are absent from a run.

The best epoch of a run is picked on the val accuracy of the ``selection_head`` its
``summary.json`` names (``fused`` for a run without one).

The functions are importable for notebooks: :func:`load_run`, :func:`comparison_table` and the
``plot_*`` functions, each of which takes one run or several, draws on ``ax`` when given and
returns the :class:`matplotlib.figure.Figure`. Figures are built without ``pyplot``, so the
module never changes the global matplotlib backend; files are rendered with Agg.

The package is split by job: :mod:`~mmjax.report.runs` (reading run directories),
:mod:`~mmjax.report.tables` (the comparison table), :mod:`~mmjax.report.plots` (plots and their
registry) and :mod:`~mmjax.report.cli` (the command, :func:`main`).
"""


from mmjax.report.cli import main, plot_names, write_report
from mmjax.report.plots import (FIGSIZE, PLOT_FUNCTIONS, RUN_MARKERS, SPEED_KEYS, SPLIT_STYLES,
                                UTILIZATION_KEYS, MetricsNotFoundError, plot_accuracy,
                                plot_gblend_weights, plot_greedy_speed, plot_loss, plot_ogr,
                                plot_utilization, rebalance_windows, register_plot)
from mmjax.report.runs import NoMetricsError, NotARunError, Run, load_run, load_runs
from mmjax.report.tables import ComparisonTable, comparison_table, group_runs

__all__ = ['FIGSIZE', 'PLOT_FUNCTIONS', 'RUN_MARKERS', 'SPEED_KEYS', 'SPLIT_STYLES',
           'UTILIZATION_KEYS', 'ComparisonTable', 'MetricsNotFoundError', 'NoMetricsError',
           'NotARunError', 'Run', 'comparison_table', 'group_runs', 'load_run', 'load_runs', 'main',
           'plot_accuracy', 'plot_gblend_weights', 'plot_greedy_speed', 'plot_loss', 'plot_names',
           'plot_ogr', 'plot_utilization', 'rebalance_windows', 'register_plot', 'write_report']
