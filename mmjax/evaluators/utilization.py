"""Greedy learning's conditional utilization rate (Wu et al., ICML 2022, Sec. 4.1).

For an MMTM network ``f`` (:mod:`mmjax.models.mmtm`), the uni-modal network ``f'_k`` is the
same network whose branch-``k`` MMTMs see every other modality's squeeze replaced by its mean
over the training set (one eval-mode pass over the train split, shared by val and test), read
from head ``k``. With ``A`` the accuracy (Sec. 4.1, the definition of ``u``),

    u(others | m_k) = (A(f) - A(f'_k)) / A(f),   d_util = u(m1|m0) - u(m0|m1),

with ``A(f)`` the accuracy of the fused prediction. Logged on val and test:
``greedy/acc_unimodal/<m>`` = ``A(f'_m)``, ``greedy/u/<m>`` = ``u(others | m)`` and
``greedy/d_util`` (``greedy/util_spread``, ``max - min``, with more than two modalities).
The greedy method lists this evaluator by default; any MMTM run may list it
(``config.evals.utilization = {}``).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax

from mmjax import evaluators
from mmjax.context import RunContext
from mmjax.methods import greedy_fn
from mmjax.methods.greedy import difference_metrics
from mmjax.models.mmtm import MMTMClassifier
from mmjax.step import eval_sums

Array = jax.Array
PyTree = Any

#: The metric-key prefix: the rates belong to the greedy-learning diagnostics.
PREFIX = 'greedy'


def squeeze_sums(model: MMTMClassifier, state: Any, batch: Mapping[str, Any], mask: Array
                 ) -> dict[str, Any]:
  """Masked sums of every MMTM's squeeze inputs over a batch, in eval mode."""
  return greedy_fn.squeeze_sums(model.apply, {'params': state.params, **state.model_state},
                                batch['inputs'], mask, model.modalities, train=False)


def unimodal_eval_sums(model: MMTMClassifier, state: Any, batch: Mapping[str, Any], mask: Array,
                       mean_squeeze: PyTree) -> dict[str, Array]:
  """Eval sums of every uni-modal ``f'_k`` (head ``k`` with the others' squeezes at their means)."""
  unimodal = greedy_fn.unimodal_outputs(
      model.apply, {'params': state.params, **state.model_state}, batch['inputs'], mean_squeeze,
      model.modalities, train=False)
  return eval_sums(unimodal, batch['label'], mask)


@evaluators.register
class ConditionalUtilizationRate(evaluators.Evaluator):
  """``A(f'_k)``, ``u(others | m_k)`` and ``d_util`` on every evaluated split (module docstring)."""

  name = 'utilization'
  PLOTS = ('greedy_utilization',)

  def setup(self, ctx: RunContext) -> None:
    if not isinstance(ctx.model, MMTMClassifier):
      raise ValueError(
          f"evals.utilization needs the MMTM network (model.name = 'mmtm'), whose squeezes it "
          f'replaces; got model {ctx.config.model.name!r}.')
    self.modalities = tuple(ctx.model.modalities)
    self.squeeze_sums = jax.jit(functools.partial(squeeze_sums, ctx.model))
    self.unimodal_eval_sums = jax.jit(functools.partial(unimodal_eval_sums, ctx.model))
    self.cached_mean_squeeze: tuple[int, PyTree] | None = None

  def mean_squeeze(self, ctx: RunContext, state: Any) -> dict[str, tuple[Array, ...]]:
    """Per modality and MMTM, the mean squeeze over the train split (eval mode), cached per step."""
    step = int(jax.device_get(state.step))
    if self.cached_mean_squeeze is None or self.cached_mean_squeeze[0] != step:
      totals = ctx.eval_totals(state, 'train', self.squeeze_sums)
      means = jax.tree.map(lambda s: s / totals['count'], totals['sums'])
      self.cached_mean_squeeze = (step, jax.device_put(means, ctx.replicated))
    return self.cached_mean_squeeze[1]

  def unimodal_results(self, ctx: RunContext, state: Any, split: str) -> dict[str, float]:
    """``loss/<m>`` and ``accuracy/<m>`` of every ``f'_m`` on ``split``."""
    mean_squeeze = self.mean_squeeze(ctx, state)
    return ctx.evaluate(state, split, eval_step=lambda s, b, mask: self.unimodal_eval_sums(
        s, b, mask, mean_squeeze))

  def evaluate(self, ctx: RunContext, state: Any, split: str, evaluated: Mapping[str, float]
               ) -> dict[str, float]:
    """Accuracy of every ``f'_k`` and the utilization rates, against ``A(f)`` in ``evaluated``."""
    results = self.unimodal_results(ctx, state, split)
    unimodal = {m: results[f'accuracy/{m}'] for m in self.modalities}
    util = greedy_fn.conditional_utilization_rate(evaluated['accuracy/fused'], unimodal)
    out = {f'{PREFIX}/acc_unimodal/{m}': a for m, a in unimodal.items()}
    out.update({f'{PREFIX}/u/{m}': u for m, u in util.items()})
    out.update(difference_metrics(PREFIX, 'util', [util[m] for m in self.modalities]))
    return out
