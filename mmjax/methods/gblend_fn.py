"""Gradient Blending (Wang, Tran, Feiszli, CVPR 2020) as pure functions for your own train step.

These are the pieces :class:`mmjax.methods.gblend.GradientBlending` is built from; a train loop
of your own calls them directly, with no ``Trainer``. Everything here works on per-head vectors
(one entry per head, in an order you choose, e.g. ``('fused', 'audio', 'video')``) and on plain
parameter pytrees; nothing depends on mmjax's models.

- The weight rule ``w_i = (dG_i / dO_i^2) / Z`` (Proposition 1, Algorithm 1):
  :func:`blend_weights` (from :mod:`mmjax.methods.ogr`, with its documented degenerate cases).
- The offline/online measurement of ``dG_i``, ``dO_i`` (Eq. 4) by training ``k + 1`` copies,
  copy ``i`` on head ``i`` alone (Algorithm 1's ``GB_Estimate``, used by Algorithms 2 and 3):
  :func:`measure_deltas`, over your own single-head train step and evaluation function.
- The in-step estimator (the first-order form of Proposition 1, §3.2): :func:`per_head_statistics`
  gives every head's gradient and its unbiased ``(G_i, O_i)`` from two halves of a training batch
  and a held-out batch, two backward passes per batch whatever the number of modalities
  (:mod:`mmjax.methods.per_head`); :func:`blend_head_gradients` combines the per-head gradients into the
  update ``sum_i w_i grad CE_i``; :func:`ema_update` and :func:`weights_from_ema` smooth ``G``
  and ``O^2`` and turn them into weights. All are pure and traced once: the weights and the EMA
  are arrays, so changing them never retraces a jitted step.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from mmjax.methods import per_head
from mmjax.methods.ogr import (blend_weights, generalization_and_overfitting,
                               overfitting_to_generalization_ratio)
from mmjax.models import groups

Array = jax.Array
PyTree = Any


class HeadStatistics(NamedTuple):
  """What :func:`per_head_statistics` measured on one training batch and one held-out batch.

  Attributes:
    grads: the per-head gradients on the whole training batch (the mean of the two halves'), a
      pytree shaped like ``params`` with a leading head axis: ``grads[i]`` is ``grad CE_i``
      (under ``jit`` it costs nothing unless used; prefer ``head_gradients``).
    generalization: ``G_i = <g_{i,V}, g_i>``, shape ``[H]`` (§3.2).
    overfitting: ``O_i = <g_{i,1}, g_{i,2}> - G_i``, shape ``[H]`` (§3.2).
    first_aux, second_aux: the ``aux`` your loss function returned on each half.
    head_gradients: the same gradients as ``grads``, one tree per backward pass
      (:class:`~mmjax.methods.per_head.PerHeadGradients`), for :func:`blend_head_gradients`.
  """
  grads: PyTree
  generalization: Array
  overfitting: Array
  first_aux: Any
  second_aux: Any
  head_gradients: per_head.PerHeadGradients


def per_head_statistics(per_head_loss_fn: Callable[..., tuple[Array, Any]], params: PyTree,
                        first_half: Any, second_half: Any, heldout: Any,
                        rngs: Sequence[Array | None] = (None, None, None), *,
                        heads: Sequence[str] | None = None,
                        parameter_labels: PyTree | None = None) -> HeadStatistics:
  """Per-head gradients and the unbiased ``(G_i, O_i)`` of Proposition 1's first-order form (§3.2).

  ``per_head_loss_fn(params, batch, rng)`` returns ``(losses, aux)`` with ``losses`` the vector
  ``[CE_1, ..., CE_H]`` of every head's mean loss on ``batch`` (``rng``: its dropout key, or
  None). It runs once on each half of the training batch and once on the held-out batch
  ``heldout`` (a batch of ``V``), with the keys ``rngs = (first, second, heldout)``: give the
  three independent keys, so the three gradients are independent draws. With ``g_{i,1}``,
  ``g_{i,2}``, ``g_{i,V}`` head ``i``'s gradients on the halves and on ``V`` and
  ``g_i = (g_{i,1} + g_{i,2}) / 2``: ``G_i = <g_{i,V}, g_i>`` and
  ``O_i = <g_{i,1}, g_{i,2}> - G_i``, whose expectations are the full-data
  ``<grad L^V, grad L^T>`` and ``<grad L^T - grad L^V, grad L^T>`` whatever the batch size
  (:func:`~mmjax.methods.ogr.split_batch_generalization_and_overfitting`).

  The gradients come from :func:`mmjax.methods.per_head.per_head_gradients`: one forward pass
  per batch and one backward pass per head, or, given the head names ``heads`` (in loss-vector
  order) and the model's ``parameter_labels`` (``parameter_groups(params)``), one backward pass
  for all unimodal heads together and one for the fused head, whatever the number of
  modalities (:func:`~mmjax.methods.per_head.head_reads`). ``G_i`` and ``O_i`` of a unimodal
  head are inner products over its own parameter groups, where its gradient lives.
  """
  first_rng, second_rng, heldout_rng = rngs
  if parameter_labels is None:
    parameter_labels = jax.tree.map(lambda _: '', params)
    reads = None
  else:
    reads = per_head.head_reads(heads, parameter_labels) if heads is not None else None

  def gradients(batch, rng):
    _, head_grads, aux = per_head.per_head_gradients(
        per_head_loss_fn, params, batch, rng, parameter_labels=parameter_labels, reads=reads,
        has_aux=True)
    return head_grads, aux

  first, first_aux = gradients(first_half, first_rng)
  second, second_aux = gradients(second_half, second_rng)
  heldout_grads, _ = gradients(heldout, heldout_rng)
  direction = jax.tree.map(lambda a, b: (a + b) / 2, first, second)
  generalization = heldout_grads.inner(direction)
  overfit = first.inner(second) - generalization
  return HeadStatistics(direction.stacked(), generalization, overfit, first_aux, second_aux,
                        direction)


def blend_head_gradients(head_grads: PyTree | per_head.PerHeadGradients, weights: Array,
                         parameter_labels: PyTree | None = None) -> PyTree:
  """The gradient of ``L_blend = sum_i w_i CE_i`` (Eq. 6) from per-head gradients.

  ``head_grads`` is a :class:`~mmjax.methods.per_head.PerHeadGradients`
  (:attr:`HeadStatistics.head_gradients`, the fast form) or a pytree with a leading head axis
  (:attr:`HeadStatistics.grads`); ``weights`` is ``[H]``. With ``parameter_labels`` (the
  model's ``parameter_groups(params)``, labels of :mod:`mmjax.models.groups`), a head with
  ``w_i = 0`` is a probe: its own ``'head/...'`` parameters still learn from ``CE_i`` with
  coefficient 1, while it sends nothing into the encoders (the probe rule of
  :mod:`mmjax.methods.base`). Without labels every parameter gets ``sum_i w_i grad_i``.
  """
  weights = jnp.asarray(weights, jnp.float32)
  probe_coefficients = jnp.where(weights > 0, weights, 1.0)

  def coefficients(group):
    return probe_coefficients if groups.kind_of(group) == groups.HEAD else weights

  if isinstance(head_grads, per_head.PerHeadGradients):
    if parameter_labels is None:
      return head_grads.weighted_sum(weights)
    return head_grads.weighted_sum(coefficients)
  if parameter_labels is None:
    return jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), head_grads)
  return jax.tree.map(lambda group, g: jnp.tensordot(coefficients(group), g, axes=1),
                      parameter_labels, head_grads)


def ema_update(ema_g: Array, ema_o2: Array, generalization: Array, overfitting: Array,
               decay: float) -> tuple[Array, Array]:
  """One step of the exponential moving averages of ``G_i`` and ``O_i^2`` (from zero).

  ``EMA <- decay * EMA + (1 - decay) * x``; :func:`weights_from_ema` removes the bias of the
  zero start. ``E[O_i^2]`` stands for the ``sigma_i^2`` of Proposition 1.
  """
  return (decay * ema_g + (1 - decay) * generalization,
          decay * ema_o2 + (1 - decay) * jnp.square(overfitting))


def weights_from_ema(ema_g: Array, ema_o2: Array, num_updates: Array, decay: float,
                     min_delta_o: float, rule: str = 'paper') -> tuple[Array, Array, Array]:
  """``(weights, dG, dO)`` from the EMAs after ``num_updates`` calls of :func:`ema_update`.

  ``dG_i = EMA(G_i) / (1 - decay^n)`` and ``dO_i = sqrt(EMA(O_i^2) / (1 - decay^n))`` (the
  bias-corrected averages), ``weights = blend_weights(dG, dO, min_delta_o, rule)``
  (Proposition 1). ``num_updates`` is an array, so a jitted caller is traced once.
  """
  debias = 1.0 - decay ** jnp.asarray(num_updates, jnp.float32)
  delta_g, delta_o = ema_g / debias, jnp.sqrt(ema_o2 / debias)
  return blend_weights(delta_g, delta_o, min_delta_o, rule), delta_g, delta_o


def stack_copies(copies: Sequence[PyTree]) -> PyTree:
  """One pytree whose leaves stack the copies' leaves on a new leading axis (for ``jax.vmap``)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *copies)


def measure_deltas(state: Any, num_heads: int, *,
                   single_head_copy: Callable[[Any, int], Any],
                   train_step: Callable[[Any, Any], Any] | Sequence[Callable[[Any, Any], Any]],
                   evaluate: Callable[[Any], tuple[Array, Array]],
                   batches: Callable[[], Iterable[Any]],
                   metric: str = 'loss',
                   stacked: bool = False,
                   evaluate_copies: Callable[[Any], tuple[Array, Array]] | None = None,
                   stack: Callable[[Sequence[Any]], Any] = stack_copies,
                   evaluate_copy: Callable[[Any, int], tuple[Array, Array]] | None = None
                   ) -> dict[str, Array]:
  """``GB_Estimate(phi^N, n)`` of Algorithm 1 up to the weights: ``dG``, ``dO`` per head (Eq. 4).

  Head ``i``'s copy ``single_head_copy(state, i)`` (your train state set to train head ``i``
  alone, e.g. loss weights one-hot on ``i``) is trained on every batch of ``batches()`` (``n``
  epochs of your data, read once: each batch goes to every copy in turn); head ``i`` is measured
  before and after on ``T'`` (a training subset) and ``V`` (held-out data) by ``evaluate(state)
  -> (train_values, heldout_values)``, two ``[H]`` vectors of every head's loss (or accuracy,
  ``metric``).

  ``train_step(copy, batch) -> copy`` trains every copy, or, as a sequence of ``num_heads``
  functions, ``train_step[i]`` trains copy ``i``: a step that computes only what head ``i``
  reads (its own branch, or every branch for the fused head) makes the estimation ``O(k)``
  instead of ``O(k^2)``. ``stacked=True`` trains all copies at once: the copies are stacked
  (``stack``, default :func:`stack_copies`) and ``train_step`` takes and returns the stacked
  copies (e.g. ``jax.jit(jax.vmap(step, in_axes=(0, None)))``); ``evaluate_copies(stacked)``
  then returns two ``[H, H]`` arrays, copy by head. Unstacked, each trained copy is measured by
  ``evaluate_copy(copy, i) -> (train_value, heldout_value)`` of head ``i`` when given, else by
  entry ``i`` of ``evaluate_copies`` (default ``evaluate``). Returns vectors in head order:
  ``delta_g``, ``delta_o`` and the measured ``train_before``, ``heldout_before``,
  ``train_after``, ``heldout_after``; pass ``delta_g``, ``delta_o`` to :func:`blend_weights`.
  """
  train_before, heldout_before = (jnp.asarray(v, jnp.float32) for v in evaluate(state))
  copies = [single_head_copy(state, i) for i in range(num_heads)]
  if stacked:
    if evaluate_copies is None:
      raise ValueError('measure_deltas(stacked=True) needs evaluate_copies for the stacked copies.')
    trained = stack(copies)
    for batch in batches():
      trained = train_step(trained, batch)
    train_after, heldout_after = (jnp.diagonal(jnp.asarray(v, jnp.float32))
                                  for v in evaluate_copies(trained))
  else:
    steps = list(train_step) if isinstance(train_step, Sequence) else [train_step] * num_heads
    if len(steps) != num_heads:
      raise ValueError(f'measure_deltas: {len(steps)} train steps for {num_heads} heads.')
    for batch in batches():
      copies = [step(copy, batch) for step, copy in zip(steps, copies)]
    if evaluate_copy is None:
      evaluate_all = evaluate_copies or evaluate

      def evaluate_copy(copy, i):
        return tuple(jnp.asarray(v, jnp.float32)[i] for v in evaluate_all(copy))

    measured = [evaluate_copy(copy, i) for i, copy in enumerate(copies)]
    train_after, heldout_after = (jnp.stack([jnp.asarray(m[j], jnp.float32) for m in measured])
                                  for j in (0, 1))
  delta_g, delta_o = generalization_and_overfitting(train_before, heldout_before, train_after,
                                                    heldout_after, metric)
  return {'delta_g': delta_g, 'delta_o': delta_o, 'train_before': train_before,
          'heldout_before': heldout_before, 'train_after': train_after,
          'heldout_after': heldout_after}


__all__ = ['HeadStatistics', 'blend_head_gradients', 'blend_weights', 'ema_update',
           'measure_deltas', 'overfitting_to_generalization_ratio', 'per_head_statistics',
           'stack_copies', 'weights_from_ema']
