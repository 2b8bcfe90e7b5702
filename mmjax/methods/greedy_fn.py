"""Balanced multi-modal learning (Wu, Jastrzebski, Cho, Geras, ICML 2022) as pure functions.

These are the pieces :class:`mmjax.methods.greedy.BalancedMultimodalLearning` is built from; a
train loop of your own calls them directly, with no ``Trainer``. They need a model with MMTM
modules between its branches (:class:`mmjax.models.mmtm.MMTM`, or the whole
:class:`mmjax.models.mmtm.MMTMClassifier`), whose MMTMs take the re-balancing arguments
``rebalance``/``average_scales`` and the utilisation arguments ``unimodal``/``mean_squeeze``
and ``sow`` ``squeeze_<m>`` and ``scale_<m>`` into ``'intermediates'``; and, for the learning
speed, the labels of :mod:`mmjax.models.groups` for its parameters (``'branch/<m>'``,
``'head/<m>'``, ``'fusion/<m>'``, ``'fusion'``).

- Conditional learning speed (Sec. 4.2): :func:`learning_speed_ratios` (``mu`` per step),
  :func:`accumulate_learning_speed` (the sums ``M``, a pure state update) and
  :func:`conditional_learning_speed` (``s(others | m_k)``).
- Conditional utilisation rate (Sec. 4.1): :func:`squeeze_sums` (for the mean squeeze over the
  training set), :func:`unimodal_outputs` and :func:`unimodal_accuracy` (the uni-modal networks
  ``f'_k`` from any apply function that takes ``unimodal``/``mean_squeeze``, and ``A(f'_k)``)
  and :func:`conditional_utilization_rate`.
- Re-balancing (Algorithm 1): :func:`update_average_scales` (the constant scales of a
  re-balancing step), :func:`guided_schedule` and :func:`random_schedule` (which step
  re-balances which branch), :func:`rebalance_flags` (the model's ``rebalance`` argument), and
  :func:`balanced_learning_update`, all of it after one train step, over the state of
  :func:`init_balanced_state`.

Every state is a pytree of arrays: a jitted train step that takes it is traced once, whatever
its values (re-balancing or not, which branch, the running averages).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mmjax.models import groups

Array = jax.Array
PyTree = Any

MODES = ('guided', 'random', 'off')


def squared_norm(leaves: Sequence[Array]) -> Array:
  """``sum ||x||^2`` over a list of arrays."""
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def group_squared_norms(trees: Sequence[PyTree], labels: PyTree, group_names: Sequence[str]
                        ) -> Array:
  """``||x_g||^2`` of every group ``g`` of ``group_names`` in each tree of ``trees``: ``[T, G]``.

  One fused reduction: every leaf's squared sum once, all trees stacked, then summed per group
  by its index (``jax.ops.segment_sum``). ``labels`` is the trees' ``parameter_groups``;
  leaves of other groups are skipped.
  """
  index = {g: i for i, g in enumerate(group_names)}
  label_leaves = jax.tree.leaves(labels)
  kept = [l for l, g in enumerate(label_leaves) if g in index]
  if not kept:
    return jnp.zeros((len(trees), len(group_names)), jnp.float32)
  leaf_sums = jnp.stack([
      jnp.stack([jnp.sum(jnp.square(leaves[l].astype(jnp.float32))) for l in kept])
      for leaves in (jax.tree.leaves(tree) for tree in trees)])
  segments = np.asarray([index[label_leaves[l]] for l in kept])
  return jax.vmap(lambda sums: jax.ops.segment_sum(sums, segments,
                                                   num_segments=len(group_names)))(leaf_sums)


def learning_speed_ratios(params: PyTree, grads: PyTree, modalities: Sequence[str],
                          labels: PyTree) -> tuple[dict[str, Array], dict[str, Array]]:
  """``mu(theta_k)`` and ``mu(theta'_k)`` per modality: ``||grad||^2 / ||theta||^2`` (Sec. 4.2).

  ``labels`` is the model's ``parameter_groups(params)``: ``theta_k`` is branch and head of
  ``k``, ``theta'_k`` its fusion layers and the shared ones (:mod:`mmjax.models.groups`). The
  squared norms of every group, of parameters and gradients, are one fused reduction
  (:func:`group_squared_norms`).
  """
  own = {m: (groups.label(groups.BRANCH, m), groups.label(groups.HEAD, m)) for m in modalities}
  fusion = {m: (groups.label(groups.FUSION, m), groups.FUSION) for m in modalities}
  names = sorted({g for pair in (*own.values(), *fusion.values()) for g in pair})
  grad_norms, param_norms = group_squared_norms((grads, params), labels, names)

  def ratio(group_names):
    picked = np.asarray([names.index(g) for g in group_names])
    return grad_norms[picked].sum() / param_norms[picked].sum()

  return ({m: ratio(own[m]) for m in modalities}, {m: ratio(fusion[m]) for m in modalities})


def conditional_learning_speed(own_sums: Mapping[str, Array], fusion_sums: Mapping[str, Array]
                               ) -> dict[str, Array]:
  """``s(others | m_k) = log10(M(theta'_k) / M(theta_k))`` per modality ``m_k`` (Sec. 4.2)."""
  return {m: jnp.log10(fusion_sums[m] / own_sums[m]) for m in own_sums}


def conditional_utilization_rate(fused_accuracy: float, unimodal_accuracy: Mapping[str, float]
                                 ) -> dict[str, float]:
  """``u(others | m_k) = (A(f) - A(f'_k)) / A(f)`` per modality (Sec. 4.1; NaN when ``A(f) = 0``)."""
  if fused_accuracy == 0:
    return {m: float('nan') for m in unimodal_accuracy}
  return {m: (fused_accuracy - a) / fused_accuracy for m, a in unimodal_accuracy.items()}


def init_speed_sums(modalities: Sequence[str]) -> dict[str, dict[str, Array]]:
  """``M(theta_k) = M(theta'_k) = 0`` for every modality: ``{'own': ..., 'fusion': ...}``."""
  return {'own': {m: jnp.float32(0) for m in modalities},
          'fusion': {m: jnp.float32(0) for m in modalities}}


def accumulate_learning_speed(speed_sums: PyTree, params: PyTree, grads: PyTree, labels: PyTree,
                              modalities: Sequence[str], normal: Array = True) -> PyTree:
  """``M(theta) += mu(theta)`` for ``theta_k`` and ``theta'_k`` of every modality (Sec. 4.2).

  ``params`` are the parameters before the update, ``grads`` the step's gradients, ``labels``
  the model's ``parameter_groups(params)``. Only normal steps count (``normal`` false on a
  re-balancing step leaves the sums as they are, as in Algorithm 1).
  """
  mu_own, mu_fusion = learning_speed_ratios(params, grads, modalities, labels)
  keep = jnp.asarray(normal).astype(jnp.float32)
  return {'own': {m: speed_sums['own'][m] + keep * mu_own[m] for m in modalities},
          'fusion': {m: speed_sums['fusion'][m] + keep * mu_fusion[m] for m in modalities}}


def _natural_key(path: tuple[str, ...]) -> tuple[Any, ...]:
  """Sorts ``mmtm_2`` before ``mmtm_10`` (module names with numbers, in call order)."""
  return tuple(tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name))
               for name in path)


def mmtm_sown(intermediates: Mapping[str, Any], modalities: Sequence[str], name: str
              ) -> dict[str, tuple[Array, ...]]:
  """What every MMTM sowed as ``<name>_<m>`` (``'squeeze'`` or ``'scale'``), per modality.

  Returns modality -> one ``[B, C_m]`` array per MMTM, the MMTMs in the natural order of their
  module paths (``mmtm_0, mmtm_1, ..., mmtm_10``; Flax's ``MMTM_0, MMTM_1, ...`` alike): the
  order in which ``average_scales`` and ``mean_squeeze`` give them their vectors.
  """
  found = []

  def walk(path, tree):
    if not isinstance(tree, Mapping):
      return
    if all(f'{name}_{m}' in tree for m in modalities):
      found.append((path, {m: tree[f'{name}_{m}'][0] for m in modalities}))
    for key, sub in tree.items():
      walk(path + (str(key),), sub)

  walk((), intermediates)
  found.sort(key=lambda item: _natural_key(item[0]))
  return {m: tuple(values[m] for _, values in found) for m in modalities}


def update_average_scales(average_scales: PyTree, normal_steps: Array,
                          scales: Mapping[str, Sequence[Array]], normal: Array
                          ) -> tuple[PyTree, Array]:
  """The running average of each branch's MMTM scales over normal steps (Algorithm 1).

  ``average_scales`` and ``scales`` map modality -> one array per MMTM (``[C_m]`` averages,
  ``[B, C_m]`` scales of this step, :func:`mmtm_sown` with ``'scale'``). On a normal step the
  average becomes ``(avg * n + mean_batch(scale)) / (n + 1)`` with ``n = normal_steps`` (the
  cumulative mean of the official code, each branch from its own scales) and ``n`` grows by
  one; on a re-balancing step both stay.
  """
  normal = jnp.asarray(normal)
  n = normal_steps.astype(jnp.float32)
  new = {m: tuple(jnp.where(normal, (avg * n + scale.mean(0)) / (n + 1), avg)
                  for avg, scale in zip(averages, scales[m]))
         for m, averages in average_scales.items()}
  return new, normal_steps + normal.astype(jnp.int32)


def rebalance_flags(schedule: Mapping[str, Array], modalities: Sequence[str]) -> dict[str, Array]:
  """Modality -> whether the coming step re-balances its branch (the model's ``rebalance``)."""
  active = schedule['remaining'] > 0
  return {m: active & (schedule['branch'] == i) for i, m in enumerate(modalities)}


def guided_schedule(schedule: Mapping[str, Array], speeds: Array, step: Array, *, alpha: float,
                    window: int, start_step: int) -> dict[str, Array]:
  """Guided re-balancing (Algorithm 1) after train step ``step`` (0-based).

  ``schedule`` holds ``remaining`` (re-balancing steps left, the coming one included) and
  ``branch`` (the index of the branch they re-balance); ``speeds`` is ``[s(others | m_k)]`` in
  modality order. After a re-balancing step ``remaining`` counts down. After a normal step at
  ``step >= start_step`` with ``max_k s - min_k s > alpha`` (``|d_speed| > alpha`` for two
  modalities) the next ``window`` steps re-balance the branch with the largest speed, the one
  learning most through fusion. Other keys of ``schedule`` are passed through.
  """
  rebalancing = schedule['remaining'] > 0
  trigger = (jnp.logical_not(rebalancing) & (step >= start_step)
             & (speeds.max() - speeds.min() > alpha))
  remaining = jnp.where(rebalancing, schedule['remaining'] - 1, jnp.where(trigger, window, 0))
  branch = jnp.where(trigger, jnp.argmax(speeds), schedule['branch'])
  return {**schedule, 'remaining': remaining.astype(jnp.int32), 'branch': branch.astype(jnp.int32)}


def random_schedule(schedule: Mapping[str, Array], rng: Array, step: Array, *, num_modalities: int,
                    start_step: int) -> dict[str, Array]:
  """Random re-balancing (the paper's control): after step ``step >= start_step`` the coming step
  is normal or re-balances one of the ``num_modalities`` branches, uniformly at random.

  ``rng`` is a fresh key for this step's draw; before ``start_step`` every step is normal.
  """
  choice = jax.random.randint(rng, (), -1, num_modalities)
  active = step >= start_step
  return {**schedule, 'remaining': (active & (choice >= 0)).astype(jnp.int32),
          'branch': jnp.maximum(choice, 0).astype(jnp.int32)}


def init_balanced_state(modalities: Sequence[str], mmtm_channels: Sequence[Mapping[str, int]],
                        rng: Array) -> dict[str, PyTree]:
  """The state of :func:`balanced_learning_update` before the first step.

  ``mmtm_channels``: per MMTM (in :func:`mmtm_sown` order), modality -> channels ``C_m``.
  ``rng`` is the key of the random schedule's draws.
  """
  return {
      'remaining': jnp.int32(0),
      'branch': jnp.int32(0),
      'average_scales': {m: tuple(jnp.zeros((c[m],), jnp.float32) for c in mmtm_channels)
                         for m in modalities},
      'normal_steps': jnp.int32(0),
      'speed_sums': init_speed_sums(modalities),
      'rebalance_steps': {m: jnp.int32(0) for m in modalities},
      'rng': rng,
  }


def balanced_learning_update(state: Mapping[str, PyTree], *, params: PyTree, grads: PyTree,
                             labels: PyTree, intermediates: Mapping[str, Any], step: Array,
                             modalities: Sequence[str], mode: str = 'guided', alpha: float = 0.01,
                             window: int = 5, start_step: int = 0) -> dict[str, PyTree]:
  """Everything Algorithm 1 does after one train step, as a pure state update.

  The step ran with ``rebalance=rebalance_flags(state, modalities)`` and
  ``average_scales=state['average_scales']``; ``params`` are its parameters before the update,
  ``grads`` its gradients, ``labels`` the model's parameter groups, ``intermediates`` what the
  model sowed, ``step`` its 0-based index. On a normal step: the running average scales
  (:func:`update_average_scales`) and the speed sums (:func:`accumulate_learning_speed`) move.
  Then ``mode`` decides the coming steps: ``'guided'`` (:func:`guided_schedule` on the
  conditional learning speeds), ``'random'`` (:func:`random_schedule`, from ``state['rng']``)
  or ``'off'`` (always normal). ``rebalance_steps`` counts each branch's re-balancing steps.
  Other keys of ``state`` are passed through.
  """
  if mode not in MODES:
    raise ValueError(f'method.mode = {mode!r}; valid modes are {list(MODES)}.')
  new = dict(state)
  flags = rebalance_flags(state, modalities)
  normal = jnp.logical_not(state['remaining'] > 0)
  new['average_scales'], new['normal_steps'] = update_average_scales(
      state['average_scales'], state['normal_steps'], mmtm_sown(intermediates, modalities, 'scale'),
      normal)
  new['speed_sums'] = accumulate_learning_speed(state['speed_sums'], params, grads, labels,
                                                modalities, normal)
  if mode == 'guided':
    speed = conditional_learning_speed(new['speed_sums']['own'], new['speed_sums']['fusion'])
    new.update(guided_schedule(new, jnp.stack([speed[m] for m in modalities]), step,
                               alpha=alpha, window=window, start_step=start_step))
  elif mode == 'random':
    rng, pick_rng = jax.random.split(state['rng'])
    new.update(random_schedule(new, pick_rng, step, num_modalities=len(modalities),
                               start_step=start_step))
    new['rng'] = rng
  new['rebalance_steps'] = {m: state['rebalance_steps'][m] + flags[m].astype(jnp.int32)
                            for m in modalities}
  return new


def squeeze_sums(apply_fn: Callable[..., Any], variables: PyTree, inputs: Mapping[str, Array],
                 mask: Array, modalities: Sequence[str], **apply_kwargs: Any) -> dict[str, Any]:
  """Masked sums of every MMTM's squeeze over a batch, for the mean squeeze of Sec. 4.1.

  Runs ``apply_fn(variables, inputs, mutable=['intermediates'], **apply_kwargs)`` (pass your
  model's evaluation flags, e.g. ``train=False``) and returns ``{'count': rows, 'sums': {m:
  (sum over rows of squeeze_m, per MMTM)}}``; summed over the training set and divided by the
  count, ``sums`` is the ``mean_squeeze`` argument of :func:`unimodal_outputs`.
  """
  _, mutated = apply_fn(variables, inputs, mutable=['intermediates'], **apply_kwargs)
  weight = mask.astype(jnp.float32)
  sown = mmtm_sown(mutated['intermediates'], modalities, 'squeeze')
  return {'count': weight.sum(),
          'sums': {m: tuple((s * weight[:, None]).sum(0) for s in sown[m]) for m in modalities}}


def unimodal_outputs(apply_fn: Callable[..., Mapping[str, Array]], variables: PyTree,
                     inputs: Mapping[str, Array], mean_squeeze: PyTree, modalities: Sequence[str],
                     **apply_kwargs: Any) -> dict[str, Array]:
  """The logits of every uni-modal network ``f'_k`` (Sec. 4.1), modality -> ``[B, C]``.

  ``f'_k`` is the same network whose branch-``k`` MMTMs see every other modality's squeeze
  replaced by its mean over the training set (``mean_squeeze``: modality -> one ``[C_m]`` per
  MMTM), read from head ``k``: ``apply_fn(variables, inputs, unimodal=every flag on,
  mean_squeeze=mean_squeeze, **apply_kwargs)[k]``. Their accuracy is ``A(f'_k)`` of
  :func:`conditional_utilization_rate`.
  """
  outputs = apply_fn(variables, inputs, unimodal={m: jnp.bool_(True) for m in modalities},
                     mean_squeeze=mean_squeeze, **apply_kwargs)
  return {m: outputs[m] for m in modalities}


def unimodal_accuracy(apply_fn: Callable[..., Mapping[str, Array]], variables: PyTree,
                      inputs: Mapping[str, Array], labels: Array, mean_squeeze: PyTree,
                      modalities: Sequence[str], mask: Array | None = None, **apply_kwargs: Any
                      ) -> dict[str, Array]:
  """``A(f'_k)`` per modality (Sec. 4.1): the accuracy of :func:`unimodal_outputs` on ``labels``.

  Over the rows where ``mask`` is nonzero (every row without one); with the fused accuracy
  ``A(f)`` it gives :func:`conditional_utilization_rate`.
  """
  weight = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  outputs = unimodal_outputs(apply_fn, variables, inputs, mean_squeeze, modalities, **apply_kwargs)
  return {m: ((outputs[m].argmax(-1) == labels) * weight).sum() / weight.sum() for m in modalities}


__all__ = ['MODES', 'accumulate_learning_speed', 'balanced_learning_update',
           'conditional_learning_speed', 'conditional_utilization_rate', 'guided_schedule',
           'group_squared_norms', 'init_balanced_state', 'init_speed_sums',
           'learning_speed_ratios', 'mmtm_sown',
           'random_schedule', 'rebalance_flags', 'squared_norm', 'squeeze_sums',
           'unimodal_accuracy', 'unimodal_outputs', 'update_average_scales']
