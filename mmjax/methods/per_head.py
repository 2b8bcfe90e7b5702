"""Per-head gradients from per-head losses, in as few backward passes as the heads allow.

A multi-modal model has several heads (``'fused'`` and one per modality) and a loss per head,
``[CE_1, ..., CE_H]``. Several methods need every head's gradient ``grad CE_i`` separately:
G-Blend's in-step estimator (Wang et al., CVPR 2020, §3.2: ``G_i``, ``O_i`` are inner products
of head ``i``'s gradients) and the gradient-modulation methods (OGM-GE, AGM, MMPareto).
``jax.jacrev`` of the loss vector takes one backward pass per head, so ``k + 1`` for ``k``
modalities.

The parameter groups of :mod:`mmjax.models.groups` say which parameters a head's loss can
reach. In a model without fusion layers, unimodal head ``m`` reads only ``'branch/<m>'`` and
``'head/<m>'``: its gradient is zero everywhere else. Heads whose groups are disjoint therefore
share one backward pass: the gradient of their summed loss, restricted to head ``i``'s groups,
is ``grad CE_i`` there (the other heads' losses do not depend on those parameters). All
unimodal heads take one pass and the fused head, which reads everything, another: two
backward passes after one forward pass (``jax.vjp``, applied to one cotangent per pass),
whatever ``k`` is. With fusion layers (MMTM) every head reads shared parameters and each head
gets its own pass, which is what ``jacrev`` costs.

- :func:`head_reads`: which groups each head's loss reads, from the labelling contract.
- :func:`plan_passes`: packs heads with disjoint groups into shared passes.
- :func:`per_head_gradients`: the losses, the :class:`PerHeadGradients` and the ``aux``.
- :class:`PerHeadGradients`: one gradient tree per pass plus, per leaf, the head it belongs
  to; its :meth:`~PerHeadGradients.inner` (``<g_i, h_i>`` per head, over head ``i``'s own
  leaves only) and :meth:`~PerHeadGradients.weighted_sum` (``sum_i c_i g_i``) cost one
  pass over the parameters per backward pass, never per head, and
  :meth:`~PerHeadGradients.stacked` gives the ``jacrev``-shaped tree with a leading head axis.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import groups

Array = jax.Array
PyTree = Any

Reads = frozenset[str] | None  # the groups a head's loss reads; None: every parameter


def head_reads(heads: Sequence[str], parameter_labels: PyTree) -> tuple[Reads, ...]:
  """Per head, the parameter groups its loss reads (None: it may read every parameter).

  From the contract of :mod:`mmjax.models.groups`: in a model with no ``'fusion'`` groups,
  head ``m`` of a modality with a ``'branch/<m>'`` group reads ``{'branch/<m>', 'head/<m>'}``;
  the fused head, and every head of a model with fusion layers, reads everything.
  """
  labels = set(jax.tree.leaves(parameter_labels))
  if any(groups.kind_of(g) == groups.FUSION for g in labels):
    return tuple(None for _ in heads)
  return tuple(frozenset({groups.label(groups.HEAD, h), groups.label(groups.BRANCH, h)})
               if groups.label(groups.BRANCH, h) in labels else None for h in heads)


def plan_passes(reads: Sequence[Reads]) -> tuple[tuple[int, ...], ...]:
  """Head indices per backward pass: heads with disjoint groups share one, in head order.

  A head that reads everything (``None``) has a pass of its own; every other head joins the
  first pass whose heads read none of its groups.
  """
  passes: list[list[int]] = []
  taken: list[set[str]] = []
  for i, read in enumerate(reads):
    for members, used in zip(passes, taken):
      if read is not None and reads[members[0]] is not None and not used & read:
        members.append(i)
        used.update(read)
        break
    else:
      passes.append([i])
      taken.append(set(read or ()))
  return tuple(tuple(p) for p in passes)


@jax.tree_util.register_pytree_node_class
class PerHeadGradients:
  """Every head's gradient, held as one gradient tree per backward pass.

  ``pass_grads[p]`` is the gradient of the summed losses of the heads of pass ``p``;
  ``owners[p][l]`` is the index of the head whose gradient leaf ``l`` (in ``jax.tree.leaves``
  order) of that pass is, or -1 where no head of the pass reads it (the leaf is zero for all of
  them). Head ``i``'s gradient is its pass's tree on its own leaves and zero elsewhere.
  A pytree (the owners are static), so it passes through ``jit``, ``vmap`` and ``jax.tree.map``:
  ``jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)`` averages two of them.
  """

  def __init__(self, pass_grads: Sequence[PyTree], owners: Sequence[Sequence[int]],
               num_heads: int, labels: Sequence[str]):
    self.pass_grads = tuple(pass_grads)
    self.owners = tuple(tuple(o) for o in owners)
    self.num_heads = num_heads
    self.labels = tuple(labels)  # each leaf's group label, in jax.tree.leaves order

  def tree_flatten(self):
    return (self.pass_grads,), (self.owners, self.num_heads, self.labels)

  @classmethod
  def tree_unflatten(cls, aux, children):
    owners, num_heads, labels = aux
    return cls(children[0], owners, num_heads, labels)

  def _pass_leaves(self) -> list[tuple[list[Array], Sequence[int]]]:
    return [(jax.tree.leaves(g), owners) for g, owners in zip(self.pass_grads, self.owners)]

  def head(self, i: int) -> PyTree:
    """Head ``i``'s gradient as a tree shaped like the parameters."""
    treedef = jax.tree.structure(self.pass_grads[0])
    out = None
    for leaves, owners in self._pass_leaves():
      if i in owners:
        out = [leaf if owner == i else jnp.zeros_like(leaf) for leaf, owner in zip(leaves, owners)]
    if out is None:
      out = [jnp.zeros_like(leaf) for leaf in jax.tree.leaves(self.pass_grads[0])]
    return jax.tree.unflatten(treedef, out)

  def stacked(self) -> PyTree:
    """The tree of ``jax.jacrev`` of the loss vector: leaves with a leading head axis ``[H]``."""
    heads = [self.head(i) for i in range(self.num_heads)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *heads)

  def inner(self, other: PerHeadGradients) -> Array:
    """``[<g_i, h_i>]`` over heads, ``h`` another :class:`PerHeadGradients` of the same plan.

    Each pass contributes the inner products of its leaves, summed per owning head: one
    reduction over the parameters per pass, whatever the number of heads.
    """
    if other.owners != self.owners:
      raise ValueError('PerHeadGradients.inner: the two come from different pass plans.')
    total = jnp.zeros((self.num_heads,), jnp.float32)
    for (leaves, owners), (other_leaves, _) in zip(self._pass_leaves(), other._pass_leaves()):
      kept = [l for l, owner in enumerate(owners) if owner >= 0]
      if not kept:
        continue
      dots = jnp.stack([jnp.vdot(leaves[l].astype(jnp.float32), other_leaves[l].astype(jnp.float32))
                        for l in kept])
      total = total + jax.ops.segment_sum(dots, np.asarray([owners[l] for l in kept]),
                                          num_segments=self.num_heads)
    return total

  def weighted_sum(self, coefficients: Array | Callable[[str], Array]) -> PyTree:
    """``sum_i c_i grad CE_i``: ``coefficients`` an ``[H]`` vector, or a function from a leaf's
    group label to its ``[H]`` vector (e.g. other coefficients on head parameters)."""
    labels = self.labels
    coefficient_of = coefficients if callable(coefficients) else (lambda _: coefficients)
    treedef = jax.tree.structure(self.pass_grads[0])
    out = [jnp.zeros_like(leaf) for leaf in jax.tree.leaves(self.pass_grads[0])]
    for leaves, owners in self._pass_leaves():
      for l, owner in enumerate(owners):
        if owner >= 0:
          c = jnp.asarray(coefficient_of(labels[l]), jnp.float32)[owner]
          out[l] = out[l] + (c * leaves[l]).astype(leaves[l].dtype)
    return jax.tree.unflatten(treedef, out)


def per_head_gradients(losses_fn: Callable[..., Any], params: PyTree, *args: Any,
                       parameter_labels: PyTree, reads: Sequence[Reads] | None = None,
                       has_aux: bool = False) -> tuple[Array, PerHeadGradients, Any]:
  """``(losses, PerHeadGradients, aux)`` of ``losses_fn(params, *args)`` (``[H]`` losses).

  One forward pass (``jax.vjp``), then one backward pass per pass of :func:`plan_passes`
  (``reads`` default: every head reads everything, one pass per head, as ``jax.jacrev``; give
  :func:`head_reads` of your heads to share passes). ``parameter_labels`` is the model's
  ``parameter_groups(params)``. With ``has_aux``, ``losses_fn`` returns ``(losses, aux)``;
  otherwise ``aux`` is None.
  """
  if has_aux:
    losses, vjp, aux = jax.vjp(lambda p: losses_fn(p, *args), params, has_aux=True)
  else:
    (losses, vjp), aux = jax.vjp(lambda p: losses_fn(p, *args), params), None
  num_heads = losses.shape[0]
  reads = tuple(reads) if reads is not None else (None,) * num_heads
  if len(reads) != num_heads:
    raise ValueError(f'per_head_gradients: {len(reads)} reads for {num_heads} head losses.')
  passes = plan_passes(reads)
  labels = jax.tree.leaves(parameter_labels)
  owners = []
  for members in passes:
    if reads[members[0]] is None:
      owners.append([members[0]] * len(labels))
    else:
      owners.append([next((i for i in members if label in reads[i]), -1) for label in labels])
  cotangents = [jnp.zeros((num_heads,), losses.dtype).at[np.asarray(members)].set(1)
                for members in passes]
  pass_grads = [vjp(c)[0] for c in cotangents]
  return losses, PerHeadGradients(pass_grads, owners, num_heads, labels), aux


__all__ = ['PerHeadGradients', 'head_reads', 'per_head_gradients', 'plan_passes']
