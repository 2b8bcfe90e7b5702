"""Balanced multi-modal learning against greedy learning (Wu, Jastrzebski, Cho, Geras, ICML 2022).

The model is the MMTM mid-fusion network (:mod:`mmjax.models.mmtm`): a branch per modality,
a head per branch, the loss the sum of the branch cross-entropies ``sum_k CE(y_k, y)`` and the
prediction the mean of the branch logits (the ``fused`` head, a parameter-free probe here).

**Conditional learning speed** (Sec. 4.2), computed inside the compiled train step from the
gradients it already has. Per step and parameter group ``theta``,
``mu(theta) = ||grad_theta L||^2 / ||theta||^2`` (squared norms summed over the group), for
branch ``k``'s own parameters ``theta_k`` (encoder and head) and for the fusion parameters that
feed it, ``theta'_k`` (its MMTM excitation layers plus the shared squeeze layers).
``M(theta) = sum_t mu_t(theta)`` over normal steps, and

    s(others | m_k) = log10(M(theta'_k) / M(theta_k)),   d_speed = s(m1|m0) - s(m0|m1).

**Balanced multi-modal learning** (Alg. 1), ``method.mode``:

- ``guided``: from ``starting_epoch`` on (1-based, as the official code's ``starting_epoch=2``:
  the first epoch is plain), a normal step with ``|d_speed| > alpha`` makes the next ``window``
  steps re-balancing steps for branch ``k`` (``k = 0`` when ``d_speed > 0``, else 1; with more
  than two modalities, when ``max_k s - min_k s > alpha``, the branch ``k`` with the largest
  ``s(others | m_k)``, the one learning most through fusion). In a re-balancing step branch
  ``k``'s MMTM scales are the running average of its own past scales, a constant, so branch
  ``k`` learns from its own modality alone. No speed is accumulated during a window.
- ``random``: after each step of ``starting_epoch`` and later, the next step is drawn to be
  normal or to re-balance one branch, uniformly at random (the paper's control). As in the
  official ``Bias_Mitigation_Random``, which draws after each backward pass once the epoch is
  unlocked, the first step of the starting epoch is normal. The draws come from the method's
  own random stream (:data:`RNG_STREAM`).
- ``off``: every step is normal (the paper's vanilla training of the same network).

The re-balancing choice (``remaining``, ``branch``), the running averages, the sums ``M`` and
the per-branch counts of re-balancing steps are arrays in the method state: switching
between normal and re-balancing steps never recompiles the step.

Two departures from the official code (``nyukat/greedy_multimodal_learning``), both fixes:
the running average of each branch is updated from *its own* scales (the code updates branch
1's with branch 0's), and only on normal training steps (the code also updates them in
evaluation forwards). The average is the cumulative mean over those steps, as in the code.

**Conditional utilization rate** (Sec. 4.1), at each evaluation, by the ``utilization``
evaluator (:mod:`mmjax.evaluators.utilization`, which the method lists in ``config.evals``; any
MMTM run may list it): the uni-modal network
``f'_k`` is the same network whose branch-``k`` MMTMs see every other modality's squeeze
replaced by its mean over the training set (one eval-mode pass over the train split, shared by
val and test), read from head ``k``. With ``A`` the accuracy,

    u(others | m_k) = (A(f) - A(f'_k)) / A(f),   d_util = u(m1|m0) - u(m0|m1),

where ``A(f)`` is the accuracy of the fused prediction (the paper's ``f``; whether it normalises
by the fused or by branch ``k``'s full-model accuracy is not confirmed by the sources we have).

Logged keys (``<m>`` a modality): ``greedy/speed/<m>`` = ``s(others | m)``, ``greedy/d_speed``,
``greedy/rebalance/<m>`` (re-balancing steps of branch ``m`` so far) with the train split;
``greedy/u/<m>`` = ``u(others | m)``, ``greedy/acc_unimodal/<m>`` = ``A(f'_m)`` and
``greedy/d_util`` with val and test. With more than two modalities ``d_speed`` and ``d_util``
are replaced by ``greedy/speed_spread`` (``max - min`` of the speeds) and
``greedy/util_spread``.

The formulas and state updates are the pure functions of :mod:`mmjax.methods.greedy_fn`, which
a train loop of your own can call without this class.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from mmjax.context import RunContext
from mmjax.data.dataset import derive_seed
from mmjax.methods import greedy_fn
from mmjax.methods.base import Method, StepInfo
# The formulas live in greedy_fn; these names stay importable from here (__all__).
from mmjax.methods.greedy_fn import (MODES, conditional_learning_speed,
                                     conditional_utilization_rate, learning_speed_ratios)
from mmjax.models.mmtm import MMTMClassifier

Array = jax.Array
PyTree = Any

RNG_STREAM = 0x67726479
"""The method's own random stream: its key is ``PRNGKey(derive_seed(seed, RNG_STREAM))``, never
the trainer's ``PRNGKey(seed)`` (whose halves initialise the model and drive dropout)."""


def difference_metrics(prefix: str, key: str, values: Sequence[Any]) -> dict[str, Any]:
  """``<prefix>/d_<key> = v_0 - v_1`` for two modalities, ``<prefix>/<key>_spread = max - min``
  for more."""
  if len(values) == 2:
    return {f'{prefix}/d_{key}': values[0] - values[1]}
  return {f'{prefix}/{key}_spread': max(values) - min(values)}


class BalancedMultimodalLearning(Method):
  """Greedy-learning diagnostics and guided re-balancing over the MMTM network."""

  name = 'greedy'
  PLOTS = ('greedy_speed',)
  DEFAULTS = {
      'mode': 'guided',  # guided | random | off
      'alpha': 0.01,  # threshold on |d_speed| (epsilon in the official code)
      'window': 5,  # Q: re-balancing steps after a trigger (curation_windowsize)
      'starting_epoch': 2,  # 1-based epoch from which re-balancing may happen
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    self.mode = cfg['mode']
    if self.mode not in MODES:
      raise ValueError(f'method.mode = {self.mode!r}; valid modes are {list(MODES)}.')
    self.alpha = float(cfg['alpha'])
    if not self.alpha >= 0:
      raise ValueError(f'method.alpha = {cfg["alpha"]!r} must be non-negative.')
    self.window = cfg['window']
    if not isinstance(self.window, int) or self.window < 1:
      raise ValueError(f'method.window = {self.window!r} must be a positive integer.')
    self.starting_epoch = cfg['starting_epoch']
    if not isinstance(self.starting_epoch, int) or self.starting_epoch < 2:
      raise ValueError(
          f'method.starting_epoch = {self.starting_epoch!r} must be an integer >= 2: re-balancing '
          'uses running averages of the MMTM scales, so the first epoch is plain.')
    if len(self.modalities) < 2:
      raise ValueError(f'the greedy method needs two or more modalities; got {list(self.modalities)}.')
    self.start_step = 0
    self.mmtm_channels: tuple[dict[str, int], ...] = ()
    self._seed = 0

  # ----- set-up ---------------------------------------------------------------------------------
  @classmethod
  def adjust_config(cls, config: Any) -> None:
    """Switches the model to the MMTM network over the same per-modality encoders, and lists
    the conditional utilization rate in ``config.evals`` (:mod:`mmjax.evaluators.utilization`).

    ``model.mmtm_stages = ()`` places MMTMs after the encoders' last three stages (all stages
    if fewer): ResNet-18 ``layer2..4`` as Wu et al., stages 1-3 of the CNN, every MLP stage.
    """
    config.model = ml_collections.ConfigDict({
        'name': 'mmtm', 'encoders': config.model.encoders.to_dict(), 'mmtm_stages': (),
        'mmtm_ratio': 4, 'dtype': config.model.get('dtype', 'float32')})
    with config.evals.unlocked():
      config.evals.utilization = {}

  def setup(self, ctx: RunContext) -> None:
    if not isinstance(ctx.model, MMTMClassifier):
      raise ValueError(
          f"method 'greedy' needs model.name = 'mmtm' (set by the method's adjust_config); got "
          f'model {ctx.config.model.name!r}.')
    self.start_step = (self.starting_epoch - 1) * ctx.steps_per_epoch
    self.mmtm_channels = ctx.model.mmtm_channels
    self._parameter_groups = ctx.model.parameter_groups
    self._seed = ctx.seed

  def initial_weights(self) -> dict[str, float]:
    return {h: 0.0 if h == 'fused' else 1.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    return {**super().init_state(), **greedy_fn.init_balanced_state(
        self.modalities, self.mmtm_channels, jax.random.PRNGKey(derive_seed(self._seed, RNG_STREAM)))}

  # ----- compiled step --------------------------------------------------------------------------
  def rebalance_flags(self, method_state: PyTree) -> dict[str, Array]:
    """Modality -> whether the current step re-balances its branch."""
    return greedy_fn.rebalance_flags(method_state, self.modalities)

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    return {**super().model_kwargs(method_state, rng),
            'rebalance': self.rebalance_flags(method_state),
            'average_scales': method_state['average_scales']}

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """Algorithm 1 after one step: :func:`mmjax.methods.greedy_fn.balanced_learning_update`."""
    state = greedy_fn.balanced_learning_update(
        method_state, params=info.params, grads=info.grads,
        labels=self._parameter_groups(info.params), intermediates=info.aux, step=info.step,
        modalities=self.modalities, mode=self.mode, alpha=self.alpha, window=self.window,
        start_step=self.start_step)
    rebalancing = (method_state['remaining'] > 0).astype(jnp.float32)
    return state, {f'{self.name}/rebalancing': rebalancing}

  # ----- host hooks -----------------------------------------------------------------------------
  def state_metrics(self, method_state: PyTree) -> dict[str, Array]:
    sums = method_state['speed_sums']
    speed = conditional_learning_speed(sums['own'], sums['fusion'])
    out = super().state_metrics(method_state)
    out.update({f'{self.name}/speed/{m}': s for m, s in speed.items()})
    out.update(difference_metrics(self.name, 'speed', [speed[m] for m in self.modalities]))
    out.update({f'{self.name}/rebalance/{m}': c for m, c in method_state['rebalance_steps'].items()})
    return out


__all__ = ['BalancedMultimodalLearning', 'MODES', 'RNG_STREAM', 'conditional_learning_speed',
           'conditional_utilization_rate', 'difference_metrics', 'learning_speed_ratios']
