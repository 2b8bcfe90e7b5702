"""MMPareto: Pareto integration of the multi-modal and uni-modal gradients of each encoder.

Wei, Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024
(official code: GeWu-Lab/MMPareto_ICML2024, ``code/MMPareto.py``). The model trains on the
multi-modal loss plus one uni-modal loss per modality, ``L = L_mm + sum_u L_u``, each uni-modal
loss from that modality's own head (the late-fusion model's per-modality heads). On the encoder
of modality ``u`` only two losses meet, ``L_mm`` and ``L_u``, with gradients ``g_mm`` and ``g_u``
over that encoder's parameters. Per mini-batch and per encoder (the paper's Algorithm 1):

- conflict test: ``cos(g_mm, g_u) = <g_mm, g_u> / (|g_mm| |g_u|)`` over the whole encoder;
- weights ``(a_mm, a_u)``: ``(1/2, 1/2)`` when ``cos > 0``; otherwise the Pareto (MGDA,
  Sener & Koltun 2018) weights, the minimiser of ``|a g_mm + (1 - a) g_u|^2`` over
  ``a in [0, 1]``, in closed form ``a = (<g_u, g_u> - <g_mm, g_u>) / |g_mm - g_u|^2``, with the
  official solver's ends: ``a = 0.999`` if ``<g_mm, g_u> >= <g_mm, g_mm>``, ``a = 0.001`` if
  ``<g_mm, g_u> >= <g_u, g_u>`` (:func:`pareto_weights`);
- integrated gradient ``h = 2 (a_mm g_mm + a_u g_u)``, per parameter tensor;
- magnitude (the paper's enlarged magnitude, for SGD's generalisation): per parameter tensor,
  ``h <- h |g_mm + g_u| / |h|`` if ``|g_mm + g_u| > |h|`` (never shrunk), then ``h <- gamma h``
  with ``gamma = 1.5`` (:func:`integrate`).

Without conflict ``h = g_mm + g_u``, the plain sum, enlarged by ``gamma``. The heads' parameters
get the plain sum's gradient (each head's own loss). The cosine and the Pareto weights are per
encoder, the magnitude rule per parameter tensor, as in the official code.

Per-loss gradients come from :func:`mmjax.methods.per_head.per_head_gradients`: one forward
pass and two backward passes (the fused loss, and all uni-modal losses together, whose
parameter groups are disjoint), where the official code takes four backward passes.

Defaults (``DEFAULTS``) are the official code's: ``gamma = 1.5``, conflict test ``cos > 0``,
per-tensor rescaling. The paper's equation numbers could not be checked against its text here:
the formulas above follow the official code, which the paper's Algorithm 1 describes.

Departures, each a documented choice (options in brackets):

- ``integration``: ``'mmpareto'`` (default) is the rule above; ``'pareto'`` always uses the
  Pareto weights, the conventional Pareto integration the paper compares against.
- ``rescale``: ``'per_tensor'`` (default) is the official magnitude rule; ``'none'`` leaves
  ``h = 2 (a_mm g_mm + a_u g_u)`` unscaled and without ``gamma`` (the paper's ablation of the
  magnitude part).
- Where ``|h| = 0`` for a tensor the rescaling leaves it at zero; the official code divides by
  zero there (NaN when ``|g_mm + g_u| > 0``).
- Models with fusion layers (MMTM) are refused: there a uni-modal head's loss reaches the other
  encoders, and the method's two-loss picture of each encoder no longer holds.
- BalanceMM (BalanceBenchmark ``MMPareto_trainer.py``) records the multi-modal and uni-modal
  gradients from one accumulated backward, so its cosine is always 1 and its encoder gradient is
  ``3 (g_mm + g_u)``, a scaled uniform multitask loss; this module computes the two separately,
  as the official code does.
- The paper uses SGD (momentum 0.9, lr 2e-3); an Adam-type optimiser largely cancels ``gamma``
  (a warning says so).

Logged per step (epoch means): ``mmpareto/cosine/<u>``, ``mmpareto/conflict/<u>`` (1 where
``cos <= 0``) and ``mmpareto/multimodal_weight/<u>`` (``a_mm``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from absl import logging

from mmjax.context import RunContext
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo
from mmjax.methods.per_head import head_reads, per_head_gradients
from mmjax.models import groups

Array = jax.Array
PyTree = Any

INTEGRATIONS = ('mmpareto', 'pareto')
RESCALES = ('per_tensor', 'none')
#: The official solver's ends of the Pareto weight of the multi-modal gradient.
WEIGHT_ENDS = (0.001, 0.999)
#: Guard on the product of norms in the cosine (``torch.nn.functional.cosine_similarity``'s eps).
COSINE_EPS = 1e-8


def cosine(mm_mm: Array, mm_u: Array, u_u: Array) -> Array:
  """``<g_mm, g_u> / max(|g_mm| |g_u|, eps)`` from the three inner products."""
  return mm_u / jnp.maximum(jnp.sqrt(mm_mm) * jnp.sqrt(u_u), COSINE_EPS)


def pareto_weights(mm_mm: Array, mm_u: Array, u_u: Array) -> tuple[Array, Array]:
  """The min-norm (MGDA) weights ``(a, 1 - a)`` of two gradients from their inner products:
  ``argmin_a |a g_mm + (1 - a) g_u|^2`` in closed form, ``0.999`` / ``0.001`` where the
  minimum lies at an end (the official two-vector solver)."""
  low, high = WEIGHT_ENDS
  denominator = mm_mm + u_u - 2.0 * mm_u
  interior = (u_u - mm_u) / jnp.where(denominator > 0, denominator, 1.0)
  a = jnp.where(mm_u >= mm_mm, high, jnp.where(mm_u >= u_u, low, interior))
  return a, 1.0 - a


def integration_weights(mm_mm: Array, mm_u: Array, u_u: Array, integration: str = 'mmpareto'
                        ) -> tuple[Array, Array]:
  """``(a_mm, a_u)``: ``(1/2, 1/2)`` when ``cos > 0`` (``'mmpareto'``), else Pareto weights."""
  if integration not in INTEGRATIONS:
    raise ValueError(f'method.integration = {integration!r}; valid choices are {list(INTEGRATIONS)}.')
  a_mm, a_u = pareto_weights(mm_mm, mm_u, u_u)
  if integration == 'pareto':
    return a_mm, a_u
  agree = cosine(mm_mm, mm_u, u_u) > 0
  return jnp.where(agree, 0.5, a_mm), jnp.where(agree, 0.5, a_u)


def integrate(g_mm: Array, g_u: Array, a_mm: Array, a_u: Array, gamma: float,
              rescale: str = 'per_tensor') -> Array:
  """One parameter tensor's new gradient: ``h = 2 (a_mm g_mm + a_u g_u)``; with
  ``'per_tensor'``, enlarged to ``|g_mm + g_u|`` if that is larger, then times ``gamma``."""
  if rescale not in RESCALES:
    raise ValueError(f'method.rescale = {rescale!r}; valid choices are {list(RESCALES)}.')
  h = 2.0 * (a_mm * g_mm.astype(jnp.float32) + a_u * g_u.astype(jnp.float32))
  if rescale == 'none':
    return h.astype(g_mm.dtype)
  sum_norm = jnp.linalg.norm((g_mm.astype(jnp.float32) + g_u.astype(jnp.float32)).ravel())
  h_norm = jnp.linalg.norm(h.ravel())
  ratio = jnp.where(h_norm > 0, sum_norm / jnp.where(h_norm > 0, h_norm, 1.0), 1.0)
  return (jnp.maximum(ratio, 1.0) * gamma * h).astype(g_mm.dtype)


def encoder_inner_products(g_mm: PyTree, g_u: PyTree, labels: PyTree, group: str
                           ) -> tuple[Array, Array, Array]:
  """``(<g_mm, g_mm>, <g_mm, g_u>, <g_u, g_u>)`` over the leaves labelled ``group``."""
  mm = [x.astype(jnp.float32).ravel() for x in groups.leaves_in(g_mm, labels, [group])]
  u = [x.astype(jnp.float32).ravel() for x in groups.leaves_in(g_u, labels, [group])]
  mm_mm = sum(jnp.vdot(x, x) for x in mm)
  mm_u = sum(jnp.vdot(x, y) for x, y in zip(mm, u))
  u_u = sum(jnp.vdot(y, y) for y in u)
  return mm_mm, mm_u, u_u


@register
class MMPareto(Method):
  """MMPareto over a late-fusion model with per-modality heads (module docstring)."""

  name = 'mmpareto'
  DEFAULTS = {
      'gamma': 1.5,
      'integration': 'mmpareto',  # mmpareto | pareto (always the Pareto weights)
      'rescale': 'per_tensor',  # per_tensor | none
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    self.gamma = cfg['gamma']
    if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) or not (
        0 < self.gamma < float('inf')):
      raise ValueError(f'method.gamma = {cfg["gamma"]!r} must be a finite positive number.')
    self.gamma = float(self.gamma)
    for key, valid in (('integration', INTEGRATIONS), ('rescale', RESCALES)):
      if cfg[key] not in valid:
        raise ValueError(f'method.{key} = {cfg[key]!r}; valid choices are {list(valid)}.')
    self.integration, self.rescale = cfg['integration'], cfg['rescale']
    if len(self.modalities) < 2:
      raise ValueError(f'MMPareto needs two or more modalities; got {list(self.modalities)}.')
    self._parameter_groups: Callable[[PyTree], PyTree] | None = None

  def setup(self, ctx: RunContext) -> None:
    shapes = jax.eval_shape(lambda: ctx.model.init(
        jax.random.PRNGKey(0), {m: jnp.zeros((1, *s)) for m, s in ctx.input_shapes.items()},
        train=False))['params']
    labels = set(jax.tree.leaves(ctx.model.parameter_groups(shapes)))
    if any(groups.kind_of(g) == groups.FUSION for g in labels):
      raise ValueError(
          f'method mmpareto needs a model without fusion layers (late fusion); model '
          f'{ctx.config.model.get("name", type(ctx.model).__name__)!r} has them.')
    if ctx.config.optimizer.name != 'sgd':
      logging.warning(
          'MMPareto enlarges gradient magnitudes; optimizer.name = %r normalises gradient scale '
          "per parameter and largely cancels gamma (the paper uses SGD: optimizer.name = 'sgd').",
          ctx.config.optimizer.name)
    self._parameter_groups = ctx.model.parameter_groups

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 for h in self.heads}

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """The per-loss gradients (two backward passes), integrated per encoder."""
    del method_state

    def losses_fn(p):
      loss, aux = loss_fn(p, batch)
      return jnp.stack([aux[1][h] for h in self.heads]), (loss, aux)

    labels = self._parameter_groups(params)
    _, per_head, (loss, aux) = per_head_gradients(
        losses_fn, params, parameter_labels=labels, reads=head_reads(self.heads, labels),
        has_aux=True)
    summed = per_head.weighted_sum(jnp.ones((len(self.heads),), jnp.float32))
    g_mm = per_head.head(self.heads.index('fused'))
    label_leaves = jax.tree.leaves(labels)
    new_leaves = jax.tree.leaves(summed)
    measured = {'cosine': {}, 'conflict': {}, 'multimodal_weight': {}}
    mm_leaves = jax.tree.leaves(g_mm)
    for m in self.modalities:
      group = groups.label(groups.BRANCH, m)
      g_u = per_head.head(self.heads.index(m))
      products = encoder_inner_products(g_mm, g_u, labels, group)
      a_mm, a_u = integration_weights(*products, integration=self.integration)
      cos = cosine(*products)
      measured['cosine'][m] = cos
      measured['conflict'][m] = (cos <= 0).astype(jnp.float32)
      measured['multimodal_weight'][m] = a_mm
      u_leaves = jax.tree.leaves(g_u)
      for l, label in enumerate(label_leaves):
        if label == group:
          new_leaves[l] = integrate(mm_leaves[l], u_leaves[l], a_mm, a_u, self.gamma, self.rescale)
    grads = jax.tree.unflatten(jax.tree.structure(summed), new_leaves)
    outputs, losses, model_state, intermediates = aux
    intermediates = {**intermediates, self.name: measured}
    return (loss, (outputs, losses, model_state, intermediates)), grads

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    measured = info.aux[self.name]
    return method_state, {f'{self.name}/{key}/{m}': value
                          for key, per_modality in measured.items()
                          for m, value in per_modality.items()}


__all__ = ['INTEGRATIONS', 'MMPareto', 'RESCALES', 'WEIGHT_ENDS', 'cosine', 'encoder_inner_products',
           'integrate', 'integration_weights', 'pareto_weights']
