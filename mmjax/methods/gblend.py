"""Gradient Blending (G-Blend), Wang, Tran, Feiszli, CVPR 2020: offline, online and per-step.

The loss is ``L_blend = sum_i w_i CE_i`` over the k unimodal heads and the fused head (Eq. 6),
with ``w_i = (dG_i / dO_i^2) / Z`` (Proposition 1, Algorithm 1; formulas and degenerate cases in
:mod:`mmjax.methods.ogr`): by default (``weight_rule='paper'``) the signed ``dO_i`` is squared,
with only ``|dO_i|`` floored at ``min_delta_o``; ``weight_rule='clamped'`` is the rule of mmjax
<= 0.1, which clamps ``dO_i`` below at ``min_delta_o`` first. ``dG_i <= 0`` gives weight 0.
Generalization and overfitting are measured on ``V``, a stratified held-out slice of the
training split (``heldout_fraction``, 8% as for Kinetics), and on ``T'``, a fixed subset of the
remaining training examples of the same size; the real val split stays for model selection.
``V`` is removed from training.

Estimators (``method.estimator``):

- ``offline`` (Algorithm 2): at epoch 0, ``k + 1`` copies of the initial state each train one
  head alone (copy ``i`` has weight 1 on head ``i``: a modality's encoder with its head, or all
  encoders with the fused head; the other heads are probes that do not move the encoders) for
  ``n`` epochs; ``dG`` and ``dO`` of head ``i`` come from copy ``i`` before and after; the
  weights are then fixed for the whole run. ``n`` is ``num_epochs`` (the paper's "full N
  epochs") unless ``estimation_epochs`` is set.
- ``online`` (Algorithm 3): the same estimate from the current state at every super-epoch
  boundary (epoch 0, ``warmup_epochs``, then every ``super_epoch`` epochs, as the paper's 10
  then 5), with ``n`` the length of the coming super-epoch (or ``estimation_epochs``).
- ``gradient`` (ours): the first-order form of Proposition 1 inside the compiled step. Per
  head, ``g_{i,1}``, ``g_{i,2}`` are ``grad CE_i`` on the two halves of the training batch
  (one forward pass each, BatchNorm statistics per half) and ``g_{i,V}`` on a batch of ``V``,
  each forward pass with its own dropout key;
  ``G_i = <g_{i,V}, g_i>`` with ``g_i`` the mean of the halves and
  ``O_i = <g_{i,1}, g_{i,2}> - G_i``
  (:func:`mmjax.methods.ogr.split_batch_generalization_and_overfitting`): their expectations
  are the full-data ``<grad L^V, grad L^T>`` and
  ``<grad L^T - grad L^V, grad L^T>``, whatever the batch size. ``G_i`` and ``O_i^2`` are
  smoothed by a bias-corrected EMA (``ema_decay``), and every ``every_steps`` steps the weights
  become ``EMA(G_i) / EMA(O_i^2)`` normalised: ``E[O^2]`` stands for the ``sigma_k^2`` of
  Proposition 1, logged as ``delta_o = sqrt(EMA(O_i^2))``; the logged ``delta_g``/``delta_o``
  are the pair that produced the current weights. The applied update is ``sum_i w_i grad CE_i``
  on the whole batch with the weights held at the start of the step (probe heads as in
  :mod:`mmjax.methods.base`). The batch size must be even. The per-head gradients take one
  forward and two backward passes per batch whatever ``k`` is (all unimodal heads in one, the
  fused head in the other: :mod:`mmjax.methods.per_head`).
  ``estimate_every = m`` (default 1, every step) estimates only on the steps with
  ``step % m == 0``; the other steps are plain blended steps (one backward pass of
  ``sum_i w_i CE_i`` with the same weights and probe rule) and leave the EMA as it is. The
  choice is a traced condition: one compiled step. The EMA then moves once per ``m`` steps
  (it averages about ``1 / (1 - ema_decay)`` estimates, ``m / (1 - ema_decay)`` steps) and is
  debiased by the number of estimates so far; the weights are still recomputed from it every
  ``every_steps`` steps (with ``every_steps < m`` some recomputations see no new estimate and
  repeat the weights).

Copy ``i`` trains only what head ``i`` reads (:meth:`GradientBlending.copy_groups`; the other
parameters stay as they were, so XLA drops their passes): an estimation is ``O(k)`` branch
passes a batch, not ``O(k^2)``, and head ``i``'s ``dG``/``dO`` equal those of the one-hot
weighted full step. The ``k + 1`` copies run one after another on each batch
(``estimation='sequential'``), or as one compiled program, ``jax.vmap`` of the one-hot weighted
full train step over the stacked copies (``'vmap'``: ``O(k^2)`` FLOPs, ``k + 1`` copies'
activations in memory); ``'auto'`` (the default) picks by a measured rule
(:meth:`GradientBlending.estimation_mode`). Both give the same numbers up to float rounding.
The copies start from the current optimiser state (its
moments and its learning-rate schedule position), so copy ``i`` is the checkpoint ``phi^N``
trained on exactly as the main run would be; MultiBench instead builds a fresh optimiser.
``estimation_fraction`` < 1 trains the copies on a seeded subset of that share of the training
split (the paper: "estimation may run on a small subset of the data"); 1, the default, is the
paper's full data.
Estimation reads its own batches (seeded by ``(seed, epoch)``), so the main data stream, and
resuming from a checkpoint, are unaffected.

G-Blend needs unimodal heads that read only their own branch (Fig. 2c): a model whose
:meth:`parameter_groups` has fusion layers (the MMTM network, where every branch's features
pass through shared MMTM layers) is refused, since a copy trained on "modality ``m``'s head"
would also train the other branches and ``dG``/``dO`` would not be modality ``m``'s. A
non-finite ``dG`` or ``dO`` from an estimation stops the run naming the head.

Weights, ``dG``, ``dO`` and ``OGR`` per head are in the method state and logged as
``gblend/weight/<head>``, ``gblend/delta_g/<head>``, ``gblend/delta_o/<head>`` and
``gblend/ogr/<head>``. They are arrays in the train state: changing them never recompiles.

The estimators are the pure functions of :mod:`mmjax.methods.gblend_fn` (``measure_deltas``,
``per_head_statistics``, ``blend_head_gradients``, ``ema_update``, ``weights_from_ema``), which a
train loop of your own can call without this class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import data
from mmjax import step as step_lib
from mmjax.context import RunContext
from mmjax.data.dataset import check_choice, check_float, check_fraction, check_int, derive_seed
from mmjax.methods import gblend_fn, ogr
from mmjax.methods.base import Method, StepInfo
from mmjax.models import groups

Array = jax.Array
PyTree = Any

ESTIMATORS = ('offline', 'online', 'gradient')
ESTIMATION_MODES = ('auto', 'vmap', 'sequential')

# Random streams of the method, each seeded by derive_seed(seed, stream, ...).
_HELDOUT_STREAM = 101
_TRAIN_SUBSET_STREAM = 102
_ESTIMATION_DATA_STREAM = 103
_HELDOUT_BATCH_STREAM = 104
_HELDOUT_DROPOUT_STREAM = 105


def check_finite_estimate(measured: Mapping[str, Array], heads: Sequence[str], epoch: int) -> None:
  """Raises ``FloatingPointError`` naming the heads whose measured losses, ``dG`` or ``dO`` are
  not finite (an estimation copy diverged), instead of letting them fall to weight 0."""
  keys = ('train_before', 'heldout_before', 'train_after', 'heldout_after', 'delta_g', 'delta_o')
  values = {k: np.asarray(jax.device_get(measured[k])) for k in keys}
  bad = [h for i, h in enumerate(heads) if not all(np.isfinite(values[k][i]) for k in keys)]
  if bad:
    details = '; '.join(
        f'{h}: ' + ', '.join(f'{k}={values[k][heads.index(h)]:.4g}' for k in keys) for h in bad)
    raise FloatingPointError(
        f'G-Blend estimate before epoch {epoch + 1}: non-finite values for head(s) '
        f'{", ".join(bad)} ({details}); the estimation copy of that head diverged (lower the '
        'learning rate), and the run stopped rather than train with meaningless weights.')


class SingleHeadTraining(Method):
  """The step of one G-Blend estimation copy: weights one-hot on the head it trains.

  Its state is ``{'weights': ...}`` only, set per copy by :meth:`GradientBlending.measure`
  (the base class's fixed-weight objective, probe rule and plain gradients do the rest).
  """

  name = 'gblend_estimation'


class GradientBlending(Method):
  """G-Blend with the ``offline``, ``online`` and ``gradient`` estimators (module docstring)."""

  name = 'gblend'
  PLOTS = ('gblend_weights', 'gblend_ogr')
  DEFAULTS = {
      'estimator': 'online',  # offline | online | gradient
      'heldout_fraction': 0.08,  # share of train held out as V
      'metric': 'loss',  # loss | accuracy: what dG and dO are measured on (offline, online)
      'weight_rule': 'paper',  # paper: dG / dO^2, signed dO | clamped: dO clamped below first
      'min_delta_o': 1e-3,  # floor on |dO| (paper) or on dO (clamped), and on sqrt(EMA O^2)
      'warmup_epochs': 10,  # online: length of the first super-epoch
      'super_epoch': 5,  # online: length of the later super-epochs
      'estimation_epochs': 0,  # epochs n of each estimation run; 0: the coming super-epoch's length
      'estimation': 'auto',  # auto | vmap | sequential: how the k + 1 estimation copies run
      'estimation_fraction': 1.0,  # offline, online: share of train the copies train on
      'ema_decay': 0.98,  # gradient: EMA decay of G and O^2
      'every_steps': 10,  # gradient: steps between weight updates
      'estimate_every': 1,  # gradient: steps between estimates of G, O (1: every step)
      'heldout_batch_size': 0,  # gradient: V batch size; 0: min(batch_size, |V|)
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    self.estimator = check_choice('method.estimator', cfg['estimator'], ESTIMATORS)
    self.heldout_fraction = check_fraction('method.heldout_fraction', cfg['heldout_fraction'])
    self.metric = check_choice('method.metric', cfg['metric'], ogr.METRICS)
    self.weight_rule = check_choice('method.weight_rule', cfg['weight_rule'], ogr.WEIGHT_RULES)
    self.min_delta_o = check_float('method.min_delta_o', cfg['min_delta_o'], 0.0)
    if self.min_delta_o <= 0:
      raise ValueError('method.min_delta_o must be positive, got 0.')
    self.warmup_epochs = check_int('method.warmup_epochs', cfg['warmup_epochs'], 1)
    self.super_epoch = check_int('method.super_epoch', cfg['super_epoch'], 1)
    self.estimation_epochs = check_int('method.estimation_epochs', cfg['estimation_epochs'], 0)
    self.estimation = check_choice('method.estimation', cfg['estimation'], ESTIMATION_MODES)
    self.estimation_fraction = check_float('method.estimation_fraction',
                                           cfg['estimation_fraction'], 0.0, 1.0)
    if self.estimation_fraction <= 0:
      raise ValueError('method.estimation_fraction must be in (0, 1], got 0.')
    self.ema_decay = check_float('method.ema_decay', cfg['ema_decay'], 0.0, 1.0)
    if self.ema_decay >= 1:
      raise ValueError('method.ema_decay must be below 1, got 1.')
    self.every_steps = check_int('method.every_steps', cfg['every_steps'], 1)
    self.estimate_every = check_int('method.estimate_every', cfg['estimate_every'], 1)
    self.heldout_batch_size = check_int('method.heldout_batch_size', cfg['heldout_batch_size'], 0)
    self._seed = 0
    self.heldout: data.Split | None = None
    self.train_subset: data.Split | None = None

  # ----- set-up -------------------------------------------------------------------------------
  @classmethod
  def adjust_config(cls, config: Any) -> None:
    """Checks the method options when the config is built (the config itself is unchanged)."""
    cls(config.method, ('fused', *config.model.encoders), tuple(config.model.encoders))

  @classmethod
  def reads_num_epochs(cls, config: Mapping[str, Any]) -> bool:
    """Offline and online estimation runs are sized by ``num_epochs``; the gradient estimator's
    are not."""
    return config.get('estimator', cls.DEFAULTS['estimator']) != 'gradient'

  def prepare_data(self, dataset: data.MultiModalDataset, seed: int) -> data.MultiModalDataset:
    """Holds out ``V`` (stratified) from train and picks ``T'`` among the rest; returns train - V."""
    train = dataset.splits['train']
    keep, heldout = data.stratified_split(train.label, self.heldout_fraction,
                                          derive_seed(seed, _HELDOUT_STREAM),
                                          key='method.heldout_fraction')
    remaining = train.take(keep)
    self.heldout = train.take(heldout)
    order = np.random.default_rng(derive_seed(seed, _TRAIN_SUBSET_STREAM)).permutation(len(keep))
    self.train_subset = remaining.take(np.sort(order[:len(heldout)]))
    return dataclasses.replace(dataset, splits={**dataset.splits, 'train': remaining})

  def setup(self, ctx: RunContext) -> None:
    example = {m: jax.ShapeDtypeStruct((1, *shape), jnp.float32)
               for m, shape in ctx.input_shapes.items()}
    shapes = jax.eval_shape(lambda x: ctx.model.init(jax.random.PRNGKey(0), x, train=False),
                            example)['params']
    self._parameter_groups = ctx.model.parameter_groups(shapes)
    fusion = sorted({g for g in jax.tree.leaves(self._parameter_groups)
                     if groups.kind_of(g) == groups.FUSION})
    if fusion:
      raise ValueError(
          f"method 'gblend' needs unimodal heads that read only their own modality, but model "
          f'{ctx.config.model.name!r} has fusion layers ({", ".join(fusion)}) between the '
          "branches, so an estimation copy of one modality's head would train the others too; "
          "use model.name = 'late_fusion'.")
    self._seed = ctx.seed
    self._num_epochs = int(ctx.config.num_epochs)
    self._train_iterator = ctx.train_iterator
    if self.estimator == 'gradient':
      if ctx.config.batch_size % (2 * ctx.mesh.size):
        raise ValueError(
            f'batch_size = {ctx.config.batch_size}: the gradient estimator splits each batch '
            f'in two halves over {ctx.mesh.size} device(s), so batch_size must be a multiple '
            f'of {2 * ctx.mesh.size}.')
      size = self.heldout_batch_size or min(ctx.config.batch_size, len(self.heldout))
      size -= size % ctx.mesh.size
      if not 0 < size <= len(self.heldout):
        raise ValueError(
            f'method.heldout_batch_size: the held-out slice has {len(self.heldout)} examples, '
            f'too few for a batch of {size or ctx.mesh.size} on {ctx.mesh.size} devices; '
            'raise method.heldout_fraction or set method.heldout_batch_size.')
      self._heldout_iterator = data.TrainIterator(
          self.heldout, size, derive_seed(self._seed, _HELDOUT_BATCH_STREAM))
    self._state_groups = self._model_state_groups(ctx, example)
    estimation = SingleHeadTraining({}, self.heads, self.modalities)
    estimation_step = step_lib.make_train_step(ctx.model, estimation, ctx.tx)
    eval_step = step_lib.make_eval_step(ctx.model, estimation)
    self._copy_steps = [jax.jit(self._own_branch_step(ctx, estimation, i))
                        for i in range(len(self.heads))]
    self._copy_evals = [jax.jit(self._own_head_eval(ctx, h)) for h in self.heads]
    self._stacked_estimation_step = jax.jit(jax.vmap(estimation_step, in_axes=(0, None)))
    self._stacked_estimation_eval = jax.jit(jax.vmap(eval_step, in_axes=(0, None, None)))
    self._chosen_estimation: str | None = None

  def _model_state_groups(self, ctx: RunContext, example: Mapping[str, Any]) -> PyTree | None:
    """``parameter_groups`` labels of the model's non-parameter collections (BatchNorm
    statistics), or None when the model's ``parameter_groups`` cannot label them."""
    shapes = jax.eval_shape(lambda x: ctx.model.init(jax.random.PRNGKey(0), x, train=False),
                            example)
    try:
      return {c: ctx.model.parameter_groups(tree) for c, tree in shapes.items() if c != 'params'}
    except (KeyError, ValueError, TypeError, IndexError, AttributeError):
      return None

  def copy_groups(self, head: str) -> frozenset[str]:
    """The parameter groups that head ``head``'s estimation copy trains: what the head reads.

    A unimodal head reads its modality's branch (``'branch/<m>'``) and its own layers; the fused
    head reads every branch and its own layers (``'head/<fused>'``). The other heads' layers
    (probes, in the main run) are left as they are: the copy measures head ``head`` alone.
    """
    branches = ({groups.label(groups.BRANCH, head)} if head in self.modalities else
                {groups.label(groups.BRANCH, m) for m in self.modalities})
    return frozenset(branches | {groups.label(groups.HEAD, head)})

  def _own_branch_step(self, ctx: RunContext, estimation: Method, i: int) -> Callable:
    """The train step of copy ``i`` that computes only what head ``i`` reads (``O(k)`` in all).

    The same update of :func:`mmjax.step.make_train_step` for the parameters and BatchNorm
    statistics head ``i`` reads (:meth:`copy_groups`; same dropout keys, same optimiser, loss
    ``CE_i``), every other parameter and statistic kept as it was, so XLA drops the other
    branches' forward and backward passes. Head ``i``'s measured values are those of the full
    one-hot-weighted step (the probe heads' updates never reach head ``i``) up to float rounding,
    for an element-wise optimiser (SGD, momentum, Adam, weight decay) as ``build_optimizer``'s.
    """
    head = self.heads[i]
    owned = self.copy_groups(head)
    param_mask = jax.tree.map(lambda g: g in owned, self._parameter_groups)
    state_masks = (None if self._state_groups is None else
                   jax.tree.map(lambda g: g in owned, self._state_groups))

    def keep_owned(mask, new, old):
      return jax.tree.map(lambda own, n, o: n if own else o, mask, new, old)

    def step(state, batch):
      dropout_rng, method_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
      kwargs = estimation.model_kwargs(state.method_state, method_rng)

      def loss_fn(params):
        outputs, model_state, _ = step_lib.forward(ctx.model, params, state.model_state,
                                                   batch['inputs'], train=True, rng=dropout_rng,
                                                   **kwargs)
        return step_lib.cross_entropy(outputs[head], batch['label']).mean(), model_state

      (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      updates, opt_state = ctx.tx.update(grads, state.opt_state, state.params, value=loss)
      params = keep_owned(param_mask, optax.apply_updates(state.params, updates), state.params)
      if state_masks is not None:
        model_state = {c: keep_owned(state_masks[c], model_state[c], state.model_state[c])
                       for c in model_state}
      return state.replace(step=state.step + 1, params=params, model_state=model_state,
                           opt_state=opt_state)

    return step

  def _own_head_eval(self, ctx: RunContext, head: str) -> Callable:
    """An eval step returning only head ``head``'s sums (the other heads' passes are dropped)."""

    def eval_step(state, batch, mask):
      outputs, _, _ = step_lib.forward(ctx.model, state.params, state.model_state,
                                       batch['inputs'], train=False)
      return step_lib.eval_sums({head: outputs[head]}, batch['label'], mask)

    return eval_step

  def initial_weights(self) -> dict[str, float]:
    """Uniform until the first estimate (which, offline and online, precedes any step)."""
    return {h: 1.0 / len(self.heads) for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    zeros = {h: jnp.float32(0.0) for h in self.heads}
    state = {**super().init_state(), 'delta_g': dict(zeros), 'delta_o': dict(zeros),
             'ogr': dict(zeros)}
    if self.estimator == 'gradient':
      heldout_rng = jax.random.PRNGKey(derive_seed(self._seed, _HELDOUT_DROPOUT_STREAM))
      state.update(ema_g=dict(zeros), ema_o2=dict(zeros), heldout_rng=heldout_rng,
                   estimate=jnp.bool_(True))
    return state

  # ----- compiled step (gradient estimator) -----------------------------------------------------
  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    """Gradient estimator: every head back-propagates on an estimating step (:meth:`gradients`
    applies the probe rule itself); on the other steps the probe rule of the base class."""
    if self.estimator != 'gradient':
      return super().model_kwargs(method_state, rng)
    if self.estimate_every == 1:
      return {}
    scales = super().model_kwargs(method_state, rng)['head_grad_scale']
    return {'head_grad_scale': {h: jnp.where(method_state['estimate'], 1.0, s)
                                for h, s in scales.items()}}

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """Gradient estimator: per-head gradients on each half of the batch and on a batch of ``V``.

    :func:`~mmjax.methods.gblend_fn.per_head_statistics` gives every ``grad CE_i`` from one
    forward pass and two backward passes (all unimodal heads together, then the fused head;
    :mod:`mmjax.methods.per_head`), run once per half of the training batch and once on ``V``;
    the second half and ``V`` get their own dropout keys (from
    ``method_state['heldout_rng']``), so the three are independent draws. The model sees each
    half as a batch of its own (BatchNorm statistics per half; the new statistics are the mean
    of the two halves', which equals the full-batch update of the running means). The applied
    gradient is ``sum_i c_i grad CE_i`` over the whole batch (the mean of the halves) with
    ``c_i = w_i`` on the branch and fusion parameters and, on head ``h``'s own parameters
    (:meth:`parameter_groups`), ``c_i = w_i`` or 1 for a probe head with ``w_i = 0``: the probe
    rule of :mod:`mmjax.methods.base`. ``(G_i, O_i)``
    (:func:`~mmjax.methods.ogr.split_batch_generalization_and_overfitting`) go to
    :meth:`update_state` in the step's intermediates under ``'gblend'``.

    With ``estimate_every = m > 1`` this runs on the steps with ``step % m == 0``
    (``method_state['estimate']``, a ``jax.lax.cond``: one compiled step); the other steps
    are a plain blended step, the gradient of ``sum_i c_i CE_i`` on the whole batch in one
    backward pass, with the same probe rule, and report ``G = O = 0`` (unused).
    """
    if self.estimator != 'gradient':
      return super().gradients(loss_fn, params, batch, method_state)
    weights = ogr.as_vector(method_state['weights'], self.heads)

    def estimating_step():
      half = batch['label'].shape[0] // 2
      second_key, heldout_key = jax.random.split(jax.random.split(method_state['heldout_rng'])[0])

      def loss_vector(p, b, rng):
        _, aux = loss_fn(p, b, rng=rng) if rng is not None else loss_fn(p, b)
        return ogr.as_vector(aux[1], self.heads), aux

      stats = gblend_fn.per_head_statistics(
          loss_vector, params, jax.tree.map(lambda x: x[:half], batch),
          jax.tree.map(lambda x: x[half:], batch), batch['heldout'],
          rngs=(None, second_key, heldout_key), heads=self.heads,
          parameter_labels=self._parameter_groups)
      grads = gblend_fn.blend_head_gradients(stats.head_gradients, weights, self._parameter_groups)
      first, second = stats.first_aux, stats.second_aux
      outputs = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), first[0], second[0])
      losses = jax.tree.map(lambda x, y: (x + y) / 2, first[1], second[1])
      model_state = jax.tree.map(lambda x, y: (x + y) / 2, first[2], second[2])
      # What the model sows is per example: the two halves' values, in batch order.
      intermediates = jax.tree.map(lambda x, y: jnp.concatenate([x, y]), first[3], second[3])
      intermediates = {**intermediates,
                       'gblend': {'g': stats.generalization, 'o': stats.overfitting}}
      objective = self.objective(losses, method_state)
      return (objective, (outputs, losses, model_state, intermediates)), grads

    if self.estimate_every == 1:
      return estimating_step()

    def blended_step():
      (objective, (outputs, losses, model_state, intermediates)), grads = jax.value_and_grad(
          loss_fn, has_aux=True)(params, batch)
      unused = jnp.zeros((len(self.heads),), jnp.float32)
      intermediates = {**intermediates, 'gblend': {'g': unused, 'o': unused}}
      return (objective, (outputs, losses, model_state, intermediates)), grads

    return jax.lax.cond(method_state['estimate'], estimating_step, blended_step)

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """Gradient estimator: EMA of ``G`` and ``O^2``; new weights when
    ``(step + 1) % every_steps == 0``.

    The EMA moves on estimating steps only (``step % estimate_every == 0``) and is debiased by
    the number of estimates so far, ``step // estimate_every + 1``. ``delta_g``, ``delta_o`` and
    ``ogr`` change only with the weights, so the logged values are the ones that produced the
    weights in use. ``estimate`` becomes whether the coming step estimates.
    """
    if self.estimator != 'gradient':
      return method_state, {}
    stats = info.aux['gblend']
    old_g = ogr.as_vector(method_state['ema_g'], self.heads)
    old_o2 = ogr.as_vector(method_state['ema_o2'], self.heads)
    new_g, new_o2 = gblend_fn.ema_update(old_g, old_o2, stats['g'], stats['o'], self.ema_decay)
    estimated = method_state['estimate']
    ema_g, ema_o2 = jnp.where(estimated, new_g, old_g), jnp.where(estimated, new_o2, old_o2)
    num_estimates = info.step // self.estimate_every + 1
    weights, delta_g, delta_o = gblend_fn.weights_from_ema(
        ema_g, ema_o2, num_estimates.astype(jnp.float32), self.ema_decay, self.min_delta_o,
        self.weight_rule)
    update = (info.step + 1) % self.every_steps == 0
    estimate = self._estimate_state(weights, delta_g, delta_o)
    new_state = dict(method_state)
    new_state.update(jax.tree.map(lambda new, old: jnp.where(update, new, old), estimate,
                                  {key: method_state[key] for key in estimate}))
    new_state.update(ema_g=self._per_head(ema_g), ema_o2=self._per_head(ema_o2),
                     heldout_rng=jax.random.split(method_state['heldout_rng'])[1],
                     estimate=(info.step + 1) % self.estimate_every == 0)
    return new_state, {}

  # ----- host hooks -----------------------------------------------------------------------------
  def extend_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    if self.estimator != 'gradient':
      return batch
    return {**batch, 'heldout': next(self._heldout_iterator)}

  def estimation_epochs_at(self, epoch: int) -> int:
    """Epochs ``n`` of the estimation before epoch ``epoch``; 0 where there is none."""
    if self.estimator == 'gradient' or epoch >= self._num_epochs:
      return 0
    if self.estimator == 'offline':
      length = self._num_epochs if epoch == 0 else 0
    elif epoch == 0:
      length = self.warmup_epochs
    elif epoch >= self.warmup_epochs and (epoch - self.warmup_epochs) % self.super_epoch == 0:
      length = self.super_epoch
    else:
      length = 0
    if not length:
      return 0
    return self.estimation_epochs or min(length, self._num_epochs - epoch)

  def on_epoch_start(self, ctx: RunContext, state: Any, epoch: int) -> tuple[Any, dict[str, float]]:
    """Offline/online: re-estimates the weights at a super-epoch boundary (Algorithms 2, 3).

    Gradient: puts the ``V`` batch stream at the main stream's position (one ``V`` batch per
    training batch), so a resumed run sees the same ``V`` batches.
    """
    if self.estimator == 'gradient':
      self._heldout_iterator.set_state(
          {**self._heldout_iterator.get_state(), 'step': self._train_iterator.step})
      return state, {}
    num_epochs = self.estimation_epochs_at(epoch)
    if not num_epochs:
      return state, {}
    measured = self.measure(ctx, state, epoch, num_epochs)
    check_finite_estimate(measured, self.heads, epoch)
    weights = ogr.blend_weights(measured['delta_g'], measured['delta_o'], self.min_delta_o,
                                self.weight_rule)
    method_state = dict(state.method_state)
    method_state.update(self._estimate_state(weights, measured['delta_g'], measured['delta_o']))
    state = state.replace(method_state=jax.device_put(method_state, ctx.replicated))
    return state, {k: float(v) for k, v in jax.device_get(self.state_metrics(method_state)).items()}

  def on_resume_within_epoch(self, ctx: RunContext, state: Any, epoch: int) -> None:
    """Gradient: puts the ``V`` batch stream back at the main stream's position."""
    del ctx, state, epoch
    if self.estimator == 'gradient':
      self._heldout_iterator.set_state(
          {**self._heldout_iterator.get_state(), 'step': self._train_iterator.step})

  def state_metrics(self, method_state: PyTree) -> dict[str, Array]:
    return {f'{self.name}/{key}/{h}': method_state[state_key][h]
            for key, state_key in (('weight', 'weights'), ('delta_g', 'delta_g'),
                                   ('delta_o', 'delta_o'), ('ogr', 'ogr'))
            for h in self.heads}

  # ----- estimation (Algorithm 1) ---------------------------------------------------------------
  def measure(self, ctx: RunContext, state: Any, epoch: int, num_epochs: int) -> dict[str, Array]:
    """``GB_Estimate(phi^N, n)`` (Algorithm 1) without the last step: ``dG``, ``dO`` per head.

    Trains ``k + 1`` copies of ``state``, copy ``i`` on head ``i`` alone, for ``num_epochs``
    epochs of batches seeded by ``(seed, epoch)``, and measures head ``i`` of copy ``i`` on
    ``T'`` and ``V`` before and after. Returns vectors in head order: ``delta_g``, ``delta_o``
    and the measured values ``train_before``, ``heldout_before``, ``train_after``,
    ``heldout_after``.
    """
    splits = (self.train_subset, self.heldout)
    key = self.metric

    def metric_vector(results):
      return ogr.as_vector({h: results[f'{key}/{h}'] for h in self.heads}, self.heads)

    def evaluate(s, eval_step=None):
      return tuple(metric_vector(ctx.evaluate(s, split, eval_step=eval_step))
                   for split in splits)

    def single_head_copy(s, i):
      weights = {h: jnp.float32(1.0 if j == i else 0.0) for j, h in enumerate(self.heads)}
      return jax.device_put(s.replace(method_state={'weights': weights}), ctx.replicated)

    if self.estimation_mode(ctx, state) == 'vmap':
      options = dict(
          stacked=True,
          train_step=lambda s, batch: self._stacked_estimation_step(s, batch)[0],
          evaluate_copies=lambda s: tuple(
              jnp.stack([metric_vector(per_copy[h]) for h in self.heads])
              for per_copy in (self._evaluate_stacked(ctx, s, split) for split in splits)),
          stack=lambda copies: jax.device_put(gblend_fn.stack_copies(copies), ctx.replicated))
    else:
      options = dict(train_step=self._copy_steps, evaluate_copy=lambda s, i: tuple(
          ctx.evaluate(s, split, eval_step=self._copy_evals[i])[f'{key}/{self.heads[i]}']
          for split in splits))
    return gblend_fn.measure_deltas(
        state, len(self.heads), single_head_copy=single_head_copy, evaluate=evaluate,
        batches=self._estimation_batches(ctx, epoch, num_epochs), metric=self.metric,
        **options)

  def _estimation_batches(self, ctx: RunContext, epoch: int, num_epochs: int
                          ) -> Callable[[], Any]:
    """A function returning the estimation's batch stream, on the mesh, read once for all copies.

    ``num_epochs`` epochs of the training split seeded by ``(seed, epoch)``, or, with
    ``estimation_fraction < 1``, of a subset of that share of it (at least one batch) drawn
    with the same seed: the paper's "estimation may run on a small subset of the data".
    """
    split = ctx.dataset.splits['train']
    seed = derive_seed(self._seed, _ESTIMATION_DATA_STREAM, epoch)
    if self.estimation_fraction < 1:
      size = max(ctx.config.batch_size, round(self.estimation_fraction * len(split)))
      order = np.random.default_rng(seed).permutation(len(split))
      split = split.take(np.sort(order[:size]))

    def batches():
      iterator = data.TrainIterator(split, ctx.config.batch_size, seed)
      for _ in range(num_epochs * iterator.steps_per_epoch):
        yield ctx.shard(next(iterator))

    return batches

  def estimation_mode(self, ctx: RunContext, state: Any) -> str:
    """``'vmap'`` or ``'sequential'``: the configured mode, or for ``'auto'`` the cheaper one.

    ``auto`` (the rule, measured once per run on the compiled programs, so it is the same on a
    resumed run): ``'sequential'`` when the ``vmap``-ed step of the ``k + 1`` copies does not fit
    in the memory the device reports (accelerators), else the mode whose compiled steps of one
    batch cost fewer floating-point operations (XLA's cost analysis of the stacked step against
    the sum of the per-copy steps); a tie keeps ``'vmap'`` (one program a batch).
    """
    if self.estimation != 'auto':
      return self.estimation
    if self._chosen_estimation is None:
      self._chosen_estimation = self._cheaper_estimation(ctx, state)
    return self._chosen_estimation

  def _cheaper_estimation(self, ctx: RunContext, state: Any) -> str:
    host = data.TrainIterator(ctx.dataset.splits['train'], ctx.config.batch_size, 0)
    host = next(host)
    batch = jax.tree.map(ctx.put_global, {'inputs': {m: host['inputs'][m] for m in ctx.modalities},
                                          'label': host['label']})
    copy = jax.device_put(state.replace(method_state={
        'weights': {h: jnp.float32(1.0 if j == 0 else 0.0) for j, h in enumerate(self.heads)}}),
        ctx.replicated)
    stacked = jax.device_put(gblend_fn.stack_copies([copy] * len(self.heads)), ctx.replicated)
    vmapped = self._stacked_estimation_step.lower(stacked, batch).compile()
    limit = (jax.devices()[0].memory_stats() or {}).get('bytes_limit')
    if limit:
      memory = vmapped.memory_analysis()
      need = sum(getattr(memory, f'{k}_size_in_bytes', 0) for k in
                 ('argument', 'output', 'temp', 'generated_code'))
      if need > limit:
        return 'sequential'
    vmap_flops = _flops(vmapped)
    sequential_flops = sum(_flops(s.lower(copy, batch).compile()) for s in self._copy_steps)
    return 'sequential' if sequential_flops < vmap_flops else 'vmap'

  def _evaluate_stacked(self, ctx: RunContext, stacked: Any, split: data.Split
                        ) -> dict[str, dict[str, float]]:
    """``ctx.evaluate`` of every stacked copy: ``{head_of_copy: {metric: mean}}``."""
    totals = ctx.eval_totals(stacked, split, self._stacked_estimation_eval)
    return {head: step_lib.finalize_eval({k: v[i] for k, v in totals.items()})
            for i, head in enumerate(self.heads)}

  # ----- helpers --------------------------------------------------------------------------------
  def _per_head(self, vector: Array) -> dict[str, Array]:
    return {h: vector[i] for i, h in enumerate(self.heads)}

  def _estimate_state(self, weights: Array, delta_g: Array, delta_o: Array) -> dict[str, PyTree]:
    ratio = ogr.overfitting_to_generalization_ratio(delta_g, delta_o, self.min_delta_o)
    return {'weights': self._per_head(weights), 'delta_g': self._per_head(delta_g),
            'delta_o': self._per_head(delta_o), 'ogr': self._per_head(ratio)}


def _flops(compiled: Any) -> float:
  """XLA's estimate of the floating-point operations of a compiled program."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))
