"""MLA: multimodal learning with alternating uni-modal adaptation through one shared head.

Zhang, Yoon, Bansal, Yao, "Multimodal Representation Learning by Alternating Unimodal
Adaptation", CVPR 2024 (official code: Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-
Adaptation, ``main.py`` with ``--gs_flag``, ``utils/utils.py`` ``GSPlugin``). Joint training is
turned into alternating uni-modal training: per mini-batch, every modality in turn takes one
optimiser update on its own loss ``L_m = CE(W phi_m + b, y)`` through a head ``(W, b)`` shared by
all modalities (:class:`mmjax.models.shared_head.SharedHeadClassifier`, which the method's
``adjust_config`` selects). Within a batch, modality ``m``'s update sees the head as the previous
modality's update left it.

Gradient modification (the paper's protection of the shared head against forgetting what the
other modalities taught it; an OWM-style orthogonal projection, ``GSPlugin.before_update``):
a projector ``P`` (``D x D``, ``D`` the feature width, initially the identity) is kept across
updates. Before modality ``m``'s update, with ``r`` the batch mean of ``phi_m`` (``1 x D``) and
``alpha_t = 0.1^(1 + i/N)`` (batch ``i`` of ``N`` in the epoch):

- ``k = P r^T``, ``P <- P - k k^T / (alpha_t + r k)``, ``P <- P / |P|_F`` (:func:`update_projector`);
- the head weight's gradient ``G`` (``C x D``) becomes ``G P^T``; in Flax's kernel layout
  (``D x C``, the transpose) ``P G_kernel`` (:func:`project_head_gradient`). The bias gradient is
  not modified.

Both are skipped at the very first update of training (the official ``exp_count = 0``).

Test-time fusion (the paper's uncertainty-based fusion): the fused head is the shared-head
model's ``'entropy'`` fusion, ``z = sum_m lambda_m z_m`` with
``lambda_m = exp(max_j H_j - H_m) / sum_k exp(max_j H_j - H_k)`` and ``H_m`` the entropy of
``softmax(z_m)`` per example (:func:`mmjax.models.shared_head.entropy_fusion_weights`). The
per-modality heads report each modality's uni-modal accuracy through the same shared head.

Two (``M``) optimiser updates per batch run inside the one compiled step, one after the other,
each with its own backward pass; the fused loss is not trained (its weight is 0).

Which PyTorch SGD behaviour this copies (``inactive_encoders``): the official code runs
``loss_m.backward(); optimizer.step(); optimizer.zero_grad()`` per modality and deletes every
``.grad`` at the end of the batch. PyTorch 1.8's ``zero_grad`` zeroes gradients, and ``SGD.step``
skips a parameter whose ``.grad`` is None but applies momentum and weight decay to a zero
gradient. So in modality ``m``'s update, the encoders of the modalities updated earlier in the
batch move again by momentum and weight decay alone, the encoders of the modalities still to
come are not touched (neither parameters nor momentum). ``'zero_grad'`` (default) copies this;
``'skip'`` updates only the active encoder and the head (``optax``-masked style). The
optimiser's step count (its learning-rate schedule, a plateau's accumulation) advances once per
batch, as PyTorch's per-epoch ``StepLR`` gives all updates of a batch the same learning rate.

Defaults (``DEFAULTS``): the paper's projection. The official recipe is SGD (momentum 0.9,
weight decay 1e-4, lr 1e-3, ×0.1 every 70 epochs, 100 epochs, batch 64); set those in
``config.optimizer``.

Departures, each a documented choice (options in brackets); the paper's equation numbers could
not be checked against its text here, so the formulas above follow the official code:

- ``projection``: ``'paper'`` (default) runs the gradient modification. In the official code as
  stored it never runs: ``GSPlugin`` only touches a parameter named ``module.weight`` but is
  handed the bare ``nn.Linear`` (``weight``); ``'none'`` reproduces that (plain alternating
  updates). BalanceMM's ``MLA_trainer`` adds the projected gradient to the raw one
  (``G + G P^T``); not offered.
- The fused prediction weighs each example by its own entropies (the paper). The official
  ``calculate_gating_weights`` takes the softmax over the batch axis and sums over the whole
  batch, one weight per modality per test batch, which makes a prediction depend on the other
  examples of its batch; not offered. ``model.fusion = 'mean'`` is the official fixed fusion
  without ``--dynamic``.
- The modalities update in the model's modality order (the official code: audio, then visual).
  Each update after the first recomputes the forward pass at the new parameters; only the active
  encoder's part of it is needed (XLA drops the rest), and its features are exactly those of the
  batch's first forward pass (that encoder has not moved yet), as in the official single forward.
- The logged ``loss/<m>`` and ``accuracy/<m>`` are those of the batch's first forward pass.

Logged per step (epoch means): ``mla/fusion_weight/<m>``, the mean entropy weight ``lambda_m`` of
the training batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax.context import RunContext
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo, blended_loss
from mmjax.models import groups
from mmjax.models.shared_head import SharedHeadClassifier, entropy_fusion_weights

Array = jax.Array
PyTree = Any

PROJECTIONS = ('paper', 'none')
INACTIVE_ENCODERS = ('zero_grad', 'skip')


def projector_alpha(batch_index: Array, steps_per_epoch: int) -> Array:
  """``alpha_t = 0.1^(1 + i/N)`` for batch ``i`` (0-based) of ``N`` in the epoch."""
  return 0.1 ** (1.0 + batch_index.astype(jnp.float32) / steps_per_epoch)


def update_projector(projector: Array, feature_mean: Array, alpha: Array) -> Array:
  """``k = P r^T``, ``P - k k^T / (alpha + r k)``, divided by its Frobenius norm."""
  r = feature_mean.astype(jnp.float32)[None, :]
  k = projector @ r.T
  projector = projector - (k @ k.T) / (alpha + (r @ k)[0, 0])
  return projector / jnp.linalg.norm(projector)


def project_head_gradient(kernel_grad: Array, projector: Array) -> Array:
  """``G P^T`` for the head weight ``G`` (``C x D``), in Flax's ``D x C`` kernel layout: ``P G``."""
  return (projector @ kernel_grad.astype(jnp.float32)).astype(kernel_grad.dtype)


def merge_update(tx: optax.GradientTransformation, keep: PyTree, new_params: PyTree,
                 params: PyTree, new_opt_state: PyTree, opt_state: PyTree, *,
                 keep_non_params: bool) -> tuple[PyTree, PyTree]:
  """The parameters and optimiser state where ``keep`` (a tree of bools shaped like the
  parameters) is true taken from the update, the rest as before; the optimiser's parameter-free
  state (step count, plateau accumulators) from the update iff ``keep_non_params``."""
  keep_state = optax.tree_map_params(
      tx, lambda _, k: k, opt_state, keep,
      transform_non_params=lambda v: jax.tree.map(lambda _: keep_non_params, v))
  select = lambda k, new, old: jnp.where(k, new, old)  # noqa: E731
  return (jax.tree.map(select, keep, new_params, params),
          jax.tree.map(select, keep_state, new_opt_state, opt_state))


@register
class AlternatingUnimodalAdaptation(Method):
  """MLA over the shared-head model (module docstring)."""

  name = 'mla'
  DEFAULTS = {
      'projection': 'paper',  # paper | none (the official code as stored)
      'inactive_encoders': 'zero_grad',  # zero_grad (PyTorch 1.8 SGD, official) | skip
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    for key, valid in (('projection', PROJECTIONS), ('inactive_encoders', INACTIVE_ENCODERS)):
      if cfg[key] not in valid:
        raise ValueError(f'method.{key} = {cfg[key]!r}; valid choices are {list(valid)}.')
    self.projection, self.inactive_encoders = cfg['projection'], cfg['inactive_encoders']
    if len(self.modalities) < 2:
      raise ValueError(f'MLA needs two or more modalities; got {list(self.modalities)}.')
    self.steps_per_epoch = 1
    self.feature_width = 0
    self._parameter_groups: Callable[[PyTree], PyTree] | None = None

  @classmethod
  def adjust_config(cls, config: Any) -> None:
    """Switches the model to one head shared by the same encoders, fused by entropy weights."""
    encoders = config.model.encoders
    config.model = ml_collections.ConfigDict({
        'name': 'shared_head',
        'encoders': encoders.to_dict() if isinstance(encoders, ml_collections.ConfigDict)
                    else dict(encoders),
        'fusion': 'entropy', 'dtype': config.model.get('dtype', 'float32')})

  def setup(self, ctx: RunContext) -> None:
    if not isinstance(ctx.model, SharedHeadClassifier):
      raise ValueError(
          f"method 'mla' needs model.name = 'shared_head' (set by the method's adjust_config); "
          f'got model {ctx.config.model.get("name", type(ctx.model).__name__)!r}.')
    shapes = jax.eval_shape(lambda: ctx.model.init(
        jax.random.PRNGKey(0), {m: jnp.zeros((1, *s)) for m, s in ctx.input_shapes.items()},
        train=False))['params']
    self.feature_width = shapes['shared_head']['kernel'].shape[0]
    self.steps_per_epoch = ctx.steps_per_epoch
    self._parameter_groups = ctx.model.parameter_groups

  def initial_weights(self) -> dict[str, float]:
    return {h: 0.0 if h == 'fused' else 1.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    return {**super().init_state(),
            'projector': jnp.eye(self.feature_width, dtype=jnp.float32)}

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    return {**super().model_kwargs(method_state, rng), 'sow_features': True}

  def _keep(self, labels: PyTree, active: int) -> PyTree:
    """Which parameters modality ``modalities[active]``'s update moves (module docstring)."""
    moved = {groups.FUSION, groups.label(groups.BRANCH, self.modalities[active])}
    if self.inactive_encoders == 'zero_grad':
      moved |= {groups.label(groups.BRANCH, m) for m in self.modalities[:active]}
    return jax.tree.map(lambda label: label in moved, labels)

  def optimizer_update(self, tx: optax.GradientTransformation, loss_fn: Callable, params: PyTree,
                       opt_state: PyTree, batch: Mapping[str, Any], method_state: PyTree,
                       step: Array) -> tuple[tuple[Array, Any], PyTree, PyTree, PyTree]:
    """One update per modality, in order, each on its own loss at the current parameters."""
    labels = self._parameter_groups(params)
    is_kernel = jax.tree.map(lambda label, p: label == groups.FUSION and jnp.ndim(p) == 2,
                             labels, params)
    first = self.modalities[0]

    def first_loss(p):
      loss, aux = loss_fn(p, batch)
      return aux[1][first], (loss, aux)

    (_, (loss, aux)), grads = jax.value_and_grad(first_loss, has_aux=True)(params)
    outputs, losses, model_state, intermediates = aux
    features = intermediates['features'][0]
    projector = method_state['projector']
    alpha = projector_alpha(step % self.steps_per_epoch, self.steps_per_epoch)
    objective = blended_loss(losses, method_state['weights'])
    applied = jax.tree.map(jnp.zeros_like, params)
    for i, m in enumerate(self.modalities):
      if i:
        grads = jax.grad(lambda p, m=m: loss_fn(p, batch)[1][1][m])(params)
      if self.projection == 'paper':
        modify = ~((step == 0) & (i == 0))
        projector = jnp.where(modify, update_projector(projector, features[m].mean(0), alpha),
                              projector)
        grads = jax.tree.map(
            lambda g, k, p=projector: jnp.where(modify, project_head_gradient(g, p), g) if k else g,
            grads, is_kernel)
      last = i == len(self.modalities) - 1
      updates, new_opt_state = tx.update(grads, opt_state, params,
                                         value=objective if last else losses[m])
      params, opt_state = merge_update(tx, self._keep(labels, i),
                                       optax.apply_updates(params, updates), params,
                                       new_opt_state, opt_state, keep_non_params=last)
      applied = jax.tree.map(jnp.add, applied, grads)
    weights = entropy_fusion_weights({m: outputs[m] for m in self.modalities})
    measured = {'projector': projector,
                'fusion_weight': {m: w.mean() for m, w in weights.items()}}
    intermediates = {k: v for k, v in intermediates.items() if k != 'features'}
    intermediates[self.name] = measured
    return (loss, (outputs, losses, model_state, intermediates)), applied, params, opt_state

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """The projector after this batch's updates; the batch's mean fusion weights."""
    measured = info.aux[self.name]
    return ({**method_state, 'projector': measured['projector']},
            {f'{self.name}/fusion_weight/{m}': w for m, w in measured['fusion_weight'].items()})


__all__ = ['AlternatingUnimodalAdaptation', 'INACTIVE_ENCODERS', 'PROJECTIONS', 'merge_update',
           'project_head_gradient', 'projector_alpha', 'update_projector']
