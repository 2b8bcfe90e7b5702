"""Overfitting, generalization and the Gradient-Blending weights (Wang et al., CVPR 2020).

Pure functions over arrays, shared by the host-side estimators (Algorithms 1-3) and the
per-step ``gradient`` estimator inside the compiled train step. Notation of the paper, §3:

- overfitting at checkpoint N: ``O_N = L^V_N - L^T_N`` (Eq. 3), V a held-out slice of train,
  T' a training subset;
- between checkpoints N and N + n: ``dO = O_{N+n} - O_N`` and ``dG = L^V_N - L^V_{N+n}``,
  ``OGR = |dO / dG|`` (Eq. 4);
- first-order form for an update direction ``g`` (§3.2): ``G = <grad L^V, g>`` and
  ``O = <grad L^T - grad L^V, g>``, estimated without bias from two halves of a training batch
  and a held-out batch (:func:`split_batch_generalization_and_overfitting`);
- blend weights (Proposition 1 / Algorithm 1): ``w_i = (dG_i / dO_i^2) / Z`` with ``Z`` making
  them sum to 1 over the k unimodal heads and the fused head.

Weight rules (``method.weight_rule``; the paper leaves every degenerate case open):

- ``'paper'`` (default): ``w_i = (dG_i / dO_i^2) / Z`` with the *signed* ``dO_i`` squared, so a
  head whose overfitting shrank (``dO_i < 0``) is weighed like one whose overfitting grew by as
  much. Only ``|dO_i|`` is floored, at ``min_delta_o``, so that ``dO_i = 0`` stays finite.
- ``'clamped'`` (mmjax <= 0.1): ``dO_i`` is clamped below at ``min_delta_o``; a head whose
  overfitting shrank gets the weight of one with ``dO = min_delta_o``, i.e. a huge one, and the
  weights collapse towards one-hot on such heads.
- Not offered: MultiBench's default ``|G / O^2|`` with ``G = L^V`` and ``O = max(L^V - L^T,
  1e-4)`` at the end of the estimation run (not differences), and MultiBench's ``delta=True`` /
  BalanceMM's ``|dG / dO^2|``, which reward a head whose held-out loss *rose* (``dG < 0``).

In both rules:

- ``dG_i <= 0``: head i did not generalize over the window, so it gets weight 0 (the ratio
  would be zero or negative, and a negative weight would do gradient *ascent* on that head).
- every head has ``dG_i <= 0`` (nothing generalized): uniform weights ``1 / (k + 1)``, the
  auxiliary-loss baseline, since no head is better supported than another.
- huge or tiny ratios: the weights are a softmax over ``log dG_i - 2 log |dO_i|``, which never
  overflows; none of the cases produces NaN or inf from finite inputs.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

METRICS = ('loss', 'accuracy')
WEIGHT_RULES = ('paper', 'clamped')


def overfitting(train_value: Array, heldout_value: Array, metric: str = 'loss') -> Array:
  """``O = L^V - L^T`` (Eq. 3); on accuracy, ``O = A^T - A^V`` (positive when overfitting)."""
  _check_metric(metric)
  if metric == 'loss':
    return jnp.asarray(heldout_value) - jnp.asarray(train_value)
  return jnp.asarray(train_value) - jnp.asarray(heldout_value)


def generalization_and_overfitting(train_before: Array, heldout_before: Array,
                                   train_after: Array, heldout_after: Array,
                                   metric: str = 'loss') -> tuple[Array, Array]:
  """``(dG, dO)`` between checkpoints N (before) and N + n (after), Eq. 4.

  On loss, ``dG = L^V_N - L^V_{N+n}``; on accuracy, ``dG = A^V_{N+n} - A^V_N`` (the paper finds
  accuracy "equally effective", §3.3). ``dO = O_{N+n} - O_N`` with :func:`overfitting`.
  Arguments are per-head arrays (or scalars) measured on T' (train) and V (held-out).
  """
  _check_metric(metric)
  sign = 1.0 if metric == 'loss' else -1.0
  delta_g = sign * (jnp.asarray(heldout_before) - jnp.asarray(heldout_after))
  delta_o = (overfitting(train_after, heldout_after, metric)
             - overfitting(train_before, heldout_before, metric))
  return delta_g, delta_o


def overfitting_to_generalization_ratio(delta_g: Array, delta_o: Array, min_delta: float) -> Array:
  """``OGR = |dO / dG|`` (Eq. 4), with ``|dG|`` clamped below at ``min_delta`` (finite at dG = 0)."""
  return jnp.abs(delta_o) / jnp.maximum(jnp.abs(delta_g), min_delta)


def blend_weights(delta_g: Array, delta_o: Array, min_delta_o: float, rule: str = 'paper'
                  ) -> Array:
  """``w_i = (dG_i / dO_i^2) / Z`` (Proposition 1, Algorithm 1), over the last axis.

  ``rule='paper'`` squares the signed ``dO_i`` with ``|dO_i|`` floored at ``min_delta_o``;
  ``rule='clamped'`` clamps ``dO_i`` below at ``min_delta_o`` first. ``dG_i <= 0`` gives
  ``w_i = 0``; if every ``dG_i <= 0`` the weights are uniform. The result is finite,
  non-negative and sums to 1 for any finite inputs (module docstring).
  """
  if rule not in WEIGHT_RULES:
    raise ValueError(f'method.weight_rule = {rule!r}; valid rules are {list(WEIGHT_RULES)}.')
  delta_g = jnp.asarray(delta_g, jnp.float32)
  delta_o = jnp.asarray(delta_o, jnp.float32)
  floor = jnp.float32(min_delta_o)
  overfit = jnp.maximum(delta_o if rule == 'clamped' else jnp.abs(delta_o), floor)
  generalized = delta_g > 0
  log_ratio = jnp.log(jnp.where(generalized, delta_g, 1.0)) - 2.0 * jnp.log(overfit)
  # log of a positive subnormal may be -inf on a flushing backend; such a head counts as 0.
  usable = generalized & jnp.isfinite(log_ratio)
  logits = jnp.where(usable, log_ratio, -jnp.inf)
  shifted = logits - jnp.max(jnp.where(usable, logits, jnp.finfo(jnp.float32).min),
                             axis=-1, keepdims=True)
  unnormalized = jnp.where(usable, jnp.exp(shifted), 0.0)
  total = unnormalized.sum(axis=-1, keepdims=True)
  uniform = jnp.full_like(unnormalized, 1.0 / unnormalized.shape[-1])
  return jnp.where(total > 0, unnormalized / jnp.where(total > 0, total, 1.0), uniform)


def tree_dot(a: PyTree, b: PyTree) -> Array:
  """``<a, b>``: the inner product of two gradient pytrees of the same structure."""
  leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x, y).real, a, b))
  return sum(leaves, jnp.float32(0.0))


def split_batch_generalization_and_overfitting(first_half_grad: PyTree, second_half_grad: PyTree,
                                               heldout_grad: PyTree) -> tuple[Array, Array]:
  """Unbiased ``(G, O)`` of §3.2 from a training batch split in two independent halves.

  With ``g_1``, ``g_2`` the gradients on the two halves, ``g = (g_1 + g_2) / 2`` and ``g_V`` on a
  held-out batch: ``G = <g_V, g>`` and ``O = <g_1, g_2> - G``. The halves and ``V`` are
  independent draws, so ``E[G] = <grad L^V, grad L^T>`` and ``E[O] = <grad L^T - grad L^V,
  grad L^T>``, the full-data values. Taking ``grad L^T`` from the same batch as the direction
  (``O = ||g||^2 - G``) would add the per-example gradient variance divided by the batch size
  to ``E[O]``, penalising noisy heads and making the weights depend on the batch size.
  """
  direction = jax.tree.map(lambda a, b: (a + b) / 2, first_half_grad, second_half_grad)
  generalization = tree_dot(heldout_grad, direction)
  return generalization, tree_dot(first_half_grad, second_half_grad) - generalization


def _check_metric(metric: str) -> None:
  if metric not in METRICS:
    raise ValueError(f'method.metric = {metric!r}; valid metrics are {list(METRICS)}.')


def as_vector(values: dict[str, Any], heads: Sequence[str]) -> Array:
  """Per-head values as a vector in ``heads`` order."""
  return jnp.stack([jnp.asarray(values[h], jnp.float32) for h in heads])
