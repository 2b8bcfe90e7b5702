"""The accuracies the literature reports, per data set and method, each with its source.

``mmjax compare`` prints the entry for a table row's data set (``config.data.name``) and
method beside our numbers (:func:`lookup`); a data set without a reported number gets ``—`` and
the reason in :data:`NOT_REPORTED`. Only numbers read in a stored source are here: a value
recalled, read off a plot or from an unretrieved table is not.

The numbers are test accuracy of the fused (multi-modal) prediction, in [0, 1]. They come with
the paper's own setting (backbone, epochs, data preprocessing, model selection), which is not
ours: the source string says which table and what differs, and docs/methods.md discusses it.
"""

from __future__ import annotations

import dataclasses

BALANCE_BENCHMARK = ('BalanceBenchmark (Xu, Cui, Huang, Wang, Hu, arXiv 2502.10816), README '
                     'figure images/Results.jpeg: ResNet-18 from scratch, AdamW, 30 epochs, '
                     'best-on-test selection; its own re-implementations of the methods')


@dataclasses.dataclass(frozen=True)
class Reported:
  """One reported number: fused test accuracy of ``method`` on ``dataset``, and its source."""
  dataset: str  # config.data.name
  method: str  # mmjax method name
  accuracy: float
  source: str
  short: str  # a few words for a table cell


def _balance_benchmark(dataset: str, values: dict[str, float]) -> list[Reported]:
  return [Reported(dataset, method, percent / 100, BALANCE_BENCHMARK, 'BalanceBenchmark')
          for method, percent in values.items()]


#: Every number we cite. BalanceBenchmark's method names map to ours: Baseline (joint training)
#: -> vanilla, GBlending -> gblend, Greedy -> greedy, OGM -> ogm_ge, and the later methods by name.
REPORTED: tuple[Reported, ...] = tuple(
    _balance_benchmark('crema_d', {
        'vanilla': 65.50, 'gblend': 71.59, 'greedy': 66.48, 'ogm_ge': 67.76, 'agm': 71.59,
        'pmr': 67.19, 'mmpareto': 79.97, 'mla': 72.30, 'reconboost': 74.01})
    + _balance_benchmark('kinetics_sounds', {
        'vanilla': 65.63, 'gblend': 68.82, 'greedy': 66.82, 'ogm_ge': 67.04, 'agm': 66.62,
        'pmr': 67.11, 'mmpareto': 74.55, 'mla': 69.05, 'reconboost': 68.38}))

#: Why a bundled data set has no number beside ours.
NOT_REPORTED: dict[str, str] = {
    'synthetic': "mmjax's own synthetic set: no paper reports on it.",
    'ucimf': ('UCI Multiple Features: none of the implemented methods\' papers reports on it.'),
    'cgmnist': ('Colored-and-gray MNIST: Wu et al. (ICML 2022) and PMR (Fan et al., CVPR 2023) '
                'report on it, but their tables could not be retrieved from the stored sources '
                '(reference/papers.md, section 2.8; reference/methods.md, section 11.2), and '
                'their data (60,000 digits, their palette) differs from the bundled 3,600.'),
}


def lookup(dataset: str, method: str) -> Reported | None:
  """The reported number for ``method`` on ``dataset``, or None."""
  for entry in REPORTED:
    if entry.dataset == dataset and entry.method == method:
      return entry
  return None


__all__ = ['BALANCE_BENCHMARK', 'NOT_REPORTED', 'REPORTED', 'Reported', 'lookup']
