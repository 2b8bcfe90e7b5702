"""PMR: prototypical modal rebalance.

Fan, Xu, Wang, Wang, Guo, "PMR: Prototypical Modal Rebalance for Multimodal Learning",
CVPR 2023 (official code: fanyunfeng-bit/Modal-Imbalance-PMR, ``main_Prototype_grad.py``).
Each modality gets a non-parametric classifier, its class prototypes in feature space; the
modality that these classifiers rate lower is pulled toward its prototypes by a prototype
cross-entropy, and in the first epochs the prototype predictions of the leading modality are
kept uncertain by an entropy term, so it does not converge early and suppress the other.

Per modality ``m`` with encoder features ``phi^m`` (before fusion) and ``C`` classes:

- prototypes: ``c^m_k = mean of phi^m(x_i) over the examples i of class k`` of a pass over a
  random 10% of the training set in evaluation mode, before every epoch; from the second
  epoch on blended with the previous ones, ``c <- (1 - mu) c_new + mu c_old``
  (``prototype_momentum`` ``mu``);
- prototype logits: ``-d(phi^m(x_i), c^m_k)``, the Euclidean (not squared) distances;
- scores: ``s^m = sum_i softmax(-d^m_i)[y_i]``; imbalance ratio of modality ``m``:
  ``rho^m = max_k s^k / s^m >= 1`` (two modalities: ``rho = s^a / s^v`` for the slower ``v``);
- coefficient of modality ``m`` (``coefficient``): ``'ratio'`` (default)
  ``beta^m = min(max(rho^m - 1, 0), 1)``; ``'constant'`` (the official code)
  ``beta^m = 1`` where ``rho^m > 1``, else 0. Only slower modalities get ``beta > 0``;
- prototype cross-entropy: ``L_PCE^m = mean_i CE(-d^m_i, y_i)``;
- prototype entropy regularisation, in the first ``entropy_epochs`` modulated epochs, on the
  leading modality ``l`` (largest ``s``): ``H^l = mean_i H(softmax(-d^l_i))``;
- loss: ``CE(fused) + alpha sum_m beta^m L_PCE^m - mu_H max_m beta^m H^l`` (``mu_H`` is
  ``entropy_weight``), the prototype terms only in the modulation window.

The prototypes are detached (computed without gradients); the distances are differentiated
through the features of the training pass.

Sources and choices. The paper's method section could not be read here (only its abstract is
stored), so the equations are reconstructed and have no paper numbers: the prototypes,
distances, scores, ratio and prototype cross-entropy from the official code; the
ratio-dependent coefficient and the entropy term follow BalanceMM's PMR (GeWu-Lab
BalanceBenchmark, ``PMR_trainer.py``, method ``PMR_PER``), which implements the two parts of
the paper's abstract that the official code leaves out (the official code applies a constant
``alpha`` to the slower modality and has no entropy term: ``coefficient='constant'``,
``entropy_weight=0`` reproduce it). Defaults: ``alpha = 1.0``, ``prototype_momentum = 0.0``
(the official argument default ``alpha`` and the momentum of its published run scripts),
modulation in 0-based epochs ``0`` to ``100`` inclusive (its defaults), prototypes from
``prototype_fraction = 0.1`` of the training set (its ``len(loader) // 10`` batches);
``entropy_weight = 1.0`` and ``entropy_epochs = 10`` are our choice (neither source gives a
default we could read).

Departures, each a documented choice:

- The prototype pass reads a fresh random subset of ``prototype_fraction`` of the training
  examples per epoch (seeded by the run's seed and the epoch, so a resumed run computes the
  same prototypes) in evaluation mode without augmentation; the official code reads the
  first tenth of its shuffled, augmented training loader. A class with no example in the
  subset keeps its previous prototype (zeros before the first epoch); the official code
  divides by zero there.
- ``prototype_update='ema'`` (a named variant, not the paper's): after the first pass,
  prototypes move in every step toward the class means of the batch's training features,
  ``c <- d c + (1 - d) mean``, ``d = ema_decay``, for the classes present in the batch.
- The entropy term uses the leading modality's own features and prototypes, averaged over
  the batch (BalanceMM's sums over the batch, and compares one modality's features with the
  other's prototypes); it applies in the epochs ``[modulation_starts, modulation_starts +
  entropy_epochs)``.
- More than two modalities: the ratio to the best score, ``rho^m = max_k s^k / s^m``, and the
  entropy on the leading modality with the largest coefficient.
- A distance of exactly zero has a zero gradient (a safe square root) instead of NaN.

The features are read from the model's per-modality encoders (``model.encoders``, submodules
``encoders_<m>``) with Flax's ``capture_intermediates``, without changing the model: the
late-fusion and MMTM models and any model built the same way. With the late-fusion model the
per-modality heads are probes (as in ``vanilla``); the fused loss trains the model.

Everything per step is inside the one compiled step; the prototypes
(``method_state['prototypes']``, ``[C, D_m]`` per modality) and the window flags are arrays in
the train state, so new prototypes never recompile the step.

Logged per step (epoch means): ``pmr/score/<m>``, ``pmr/ratio/<m>``, ``pmr/coefficient/<m>``
(applied where ``pmr/modulating`` is 1), ``pmr/prototype_loss/<m>``, ``pmr/entropy/<m>``,
``pmr/regularising``; with the train split at each epoch's start,
``pmr/prototype_accuracy/<m>`` (the accuracy of the prototype classifier on the pass that
built the prototypes, with the previous prototypes; not logged before the first epoch).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax.context import RunContext
from mmjax.data.dataset import derive_seed
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo
from mmjax.methods.ogm_ge import in_window, modulation_window
from mmjax.models.late_fusion import LateFusionClassifier

Array = jax.Array
PyTree = Any

RNG_STREAM = 0x706d72
"""The stream of the prototype subsets: epoch ``e`` draws with ``derive_seed(seed, RNG_STREAM, e)``."""
COEFFICIENTS = ('ratio', 'constant')
PROTOTYPE_UPDATES = ('epoch_pass', 'ema')
MIN_SCORE = 1e-30
ENCODER_PREFIX = 'encoders_'


def capture_encoder_outputs(module: Any, method_name: str) -> bool:
  """Flax ``capture_intermediates`` filter: the outputs of the per-modality encoders
  (``__call__``, or ``embed`` where a mid-fusion model runs their stages itself)."""
  return method_name in ('__call__', 'embed') and (module.name or '').startswith(ENCODER_PREFIX)


def encoder_features(intermediates: Mapping[str, Any], modalities: Sequence[str]) -> dict[str, Array]:
  """Each modality's encoder output from intermediates captured with
  :func:`capture_encoder_outputs`."""
  out = {}
  for m in modalities:
    captured = intermediates.get(f'{ENCODER_PREFIX}{m}', {})
    values = captured.get('__call__', captured.get('embed'))
    if values is None:
      raise ValueError(
          f"method 'pmr' reads modality {m!r}'s features from the model's encoder "
          f"'{ENCODER_PREFIX}{m}', which did not run; the model needs its per-modality encoders "
          "as model.encoders (as the late_fusion and mmtm models).")
    out[m] = values[0]
  return out


def prototype_distances(features: Array, prototypes: Array) -> Array:
  """``d[i, k] = ||phi_i - c_k||_2`` (``[B, D]`` and ``[C, D]`` to ``[B, C]``); a zero distance
  has gradient zero."""
  diff = features.astype(jnp.float32)[:, None, :] - prototypes.astype(jnp.float32)[None, :, :]
  squared = jnp.sum(jnp.square(diff), axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def prototype_scores(distances: Mapping[str, Array], labels: Array) -> dict[str, Array]:
  """``s^m = sum_i softmax(-d^m_i)[y_i]``."""
  return {m: jnp.take_along_axis(jax.nn.softmax(-d, axis=-1), labels[:, None], axis=-1).sum()
          for m, d in distances.items()}


def imbalance_ratios(scores: Mapping[str, Array]) -> dict[str, Array]:
  """``rho^m = max_k s^k / s^m`` (scores clamped below at 1e-30)."""
  if len(scores) < 2:
    raise ValueError(f'PMR needs two or more modalities; got {list(scores)}.')
  clamped = {m: jnp.maximum(s, MIN_SCORE) for m, s in scores.items()}
  best = jnp.max(jnp.stack(list(clamped.values())))
  return {m: best / s for m, s in clamped.items()}


def rebalance_coefficients(ratios: Mapping[str, Array], rule: str = 'ratio') -> dict[str, Array]:
  """``beta^m = min(max(rho^m - 1, 0), 1)`` (``'ratio'``) or ``[rho^m > 1]`` (``'constant'``)."""
  if rule not in COEFFICIENTS:
    raise ValueError(f'method.coefficient = {rule!r}; valid rules are {list(COEFFICIENTS)}.')
  if rule == 'constant':
    return {m: (r > 1.0).astype(jnp.float32) for m, r in ratios.items()}
  return {m: jnp.clip(r - 1.0, 0.0, 1.0) for m, r in ratios.items()}


def prototype_cross_entropy(distances: Array, labels: Array) -> Array:
  """``L_PCE = mean_i CE(-d_i, y_i)``."""
  return optax.softmax_cross_entropy_with_integer_labels(-distances, labels).mean()


def prototype_entropy(distances: Array) -> Array:
  """``H = mean_i H(softmax(-d_i)) = mean_i -sum_k p_ik log p_ik``."""
  log_p = jax.nn.log_softmax(-distances, axis=-1)
  return -(jnp.exp(log_p) * log_p).sum(-1).mean()


def class_sums(features: Array, labels: Array, mask: Array, num_classes: int
               ) -> tuple[Array, Array]:
  """Per class, the sum of the masked-in features and their count: ``[C, D]`` and ``[C]``."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask.astype(jnp.float32)[:, None]
  return onehot.T @ features.astype(jnp.float32), onehot.sum(0)


def new_prototypes(sums: Array, counts: Array, previous: Array, momentum: float,
                   blend: bool) -> Array:
  """Class means ``sums / counts`` (the previous prototype where a class has no example), then
  ``(1 - mu) new + mu previous`` when ``blend``."""
  counts = jnp.asarray(counts)[:, None]
  means = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), previous)
  return (1.0 - momentum) * means + momentum * previous if blend else means


def ema_prototypes(prototypes: Array, sums: Array, counts: Array, decay: float) -> Array:
  """``c <- d c + (1 - d) mean`` for the classes with examples (``counts > 0``), others kept."""
  counts = counts[:, None]
  means = sums / jnp.maximum(counts, 1.0)
  return jnp.where(counts > 0, decay * prototypes + (1.0 - decay) * means, prototypes)


@register
class PrototypicalModalRebalance(Method):
  """PMR over a model with per-modality encoders (module docstring)."""

  name = 'pmr'
  DEFAULTS = {
      'alpha': 1.0,
      'coefficient': 'ratio',  # ratio (rho-dependent) | constant (official code)
      'entropy_weight': 1.0,  # mu_H; 0 turns the entropy regularisation off
      'entropy_epochs': 10,  # epochs of entropy regularisation from modulation_starts
      'modulation_starts': 0,  # first epoch with prototype terms, 0-based
      'modulation_ends': 100,  # last one, inclusive
      'prototype_fraction': 0.1,  # share of the training set read per prototype pass
      'prototype_momentum': 0.0,  # mu: weight of the previous prototypes
      'prototype_update': 'epoch_pass',  # epoch_pass | ema (variant)
      'ema_decay': 0.9,  # d for prototype_update='ema'
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}

    def number(key: str, low: float, high: float | None = None) -> float:
      value = cfg[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
          value) or value < low or (high is not None and value > high):
        bounds = f'in [{low}, {high}]' if high is not None else f'>= {low}'
        raise ValueError(f'method.{key} = {value!r} must be a number {bounds}.')
      return float(value)

    self.alpha = number('alpha', 0.0)
    self.entropy_weight = number('entropy_weight', 0.0)
    self.momentum = number('prototype_momentum', 0.0, 1.0)
    self.ema_decay = number('ema_decay', 0.0, 1.0)
    self.fraction = number('prototype_fraction', 0.0, 1.0)
    if self.fraction == 0:
      raise ValueError('method.prototype_fraction = 0 reads no example; it must be in (0, 1].')
    self.starts, self.ends = modulation_window(cfg)
    value = cfg['entropy_epochs']
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ValueError(f'method.entropy_epochs = {value!r} must be a non-negative integer.')
    self.entropy_epochs = cfg['entropy_epochs']
    for key, valid in (('coefficient', COEFFICIENTS), ('prototype_update', PROTOTYPE_UPDATES)):
      if cfg[key] not in valid:
        raise ValueError(f'method.{key} = {cfg[key]!r}; valid choices are {list(valid)}.')
    self.coefficient, self.prototype_update = cfg['coefficient'], cfg['prototype_update']
    if len(self.modalities) < 2:
      raise ValueError(f'PMR needs two or more modalities; got {list(self.modalities)}.')
    self.steps_per_epoch = 1
    self.num_classes = 0
    self.feature_sizes: dict[str, int] = {}
    self.probes = True
    self._seed = 0
    self._sums_fn: Callable | None = None

  # ----- set-up ---------------------------------------------------------------------------------
  def setup(self, ctx: RunContext) -> None:
    encoders = getattr(ctx.model, 'encoders', None)
    if not isinstance(encoders, Mapping) or any(m not in encoders for m in self.modalities):
      raise ValueError(
          f"method 'pmr' needs a model whose per-modality encoders are its 'encoders' "
          f"(the late_fusion and mmtm models); model {ctx.config.model.name!r} has none for "
          f'modalities {list(self.modalities)}.')
    example = {m: jnp.zeros((1, *s), jnp.float32) for m, s in ctx.input_shapes.items()}

    def features_of(inputs):
      variables = ctx.model.init(jax.random.PRNGKey(0), inputs, train=False)
      _, captured = ctx.model.apply(variables, inputs, train=False, mutable=['intermediates'],
                                    capture_intermediates=capture_encoder_outputs)
      return encoder_features(captured['intermediates'], self.modalities)

    shapes = jax.eval_shape(features_of, example)
    for m, shape in shapes.items():
      if len(shape.shape) != 2:
        raise ValueError(f"method 'pmr': the encoder of modality {m!r} returns shape "
                         f'{shape.shape}; prototypes need [batch, features].')
    self.feature_sizes = {m: s.shape[-1] for m, s in shapes.items()}
    self.num_classes = ctx.dataset.num_classes
    self.steps_per_epoch = ctx.steps_per_epoch
    self.probes = isinstance(ctx.model, LateFusionClassifier)
    self._seed = ctx.seed
    model, modalities, num_classes = ctx.model, self.modalities, self.num_classes

    def prototype_pass_sums(state, batch, mask):
      variables = {'params': state.params, **state.model_state}
      _, captured = model.apply(variables, batch['inputs'], train=False, mutable=['intermediates'],
                                capture_intermediates=capture_encoder_outputs)
      features = encoder_features(captured['intermediates'], modalities)
      sums, correct = {}, {}
      for m, f in features.items():
        sums[m] = class_sums(f, batch['label'], mask, num_classes)
        predicted = jnp.argmin(prototype_distances(f, state.method_state['prototypes'][m]), -1)
        correct[m] = ((predicted == batch['label']) & mask).sum().astype(jnp.float32)
      return {'sums': sums, 'correct': correct}

    self._sums_fn = jax.jit(prototype_pass_sums)

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 if h == 'fused' else 0.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    return {**super().init_state(),
            'prototypes': {m: jnp.zeros((self.num_classes, d), jnp.float32)
                           for m, d in self.feature_sizes.items()},
            'modulating': in_window(0, self.starts, self.ends),
            'regularising': self._regularising(0)}

  def _regularising(self, epoch: Array | int) -> Array:
    return in_window(epoch, self.starts, self.starts + self.entropy_epochs - 1) & (
        self.entropy_weight > 0) & (self.entropy_epochs > 0)

  # ----- compiled step --------------------------------------------------------------------------
  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    kwargs = super().model_kwargs(method_state, rng) if self.probes else {}
    return {**kwargs, 'capture_intermediates': capture_encoder_outputs}

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """The fused loss plus the prototype cross-entropy and entropy terms (module docstring)."""
    labels = batch['label']

    def objective(p):
      loss, (outputs, losses, model_state, intermediates) = loss_fn(p, batch)
      if not self.probes:
        loss = losses['fused']
      features = encoder_features(intermediates, self.modalities)
      prototypes = jax.lax.stop_gradient(method_state['prototypes'])
      distances = {m: prototype_distances(features[m], prototypes[m]) for m in self.modalities}
      scores = prototype_scores(jax.lax.stop_gradient(distances), labels)
      ratios = imbalance_ratios(scores)
      coefficients = rebalance_coefficients(ratios, self.coefficient)
      pce = {m: prototype_cross_entropy(d, labels) for m, d in distances.items()}
      entropy = {m: prototype_entropy(d) for m, d in distances.items()}
      leading = jnp.argmax(jnp.stack([scores[m] for m in self.modalities]))
      leading_entropy = jnp.stack([entropy[m] for m in self.modalities])[leading]
      largest = jnp.max(jnp.stack(list(coefficients.values())))
      modulating = method_state['modulating'].astype(jnp.float32)
      regularising = method_state['regularising'].astype(jnp.float32)
      loss = loss + modulating * (
          self.alpha * sum(coefficients[m] * pce[m] for m in self.modalities)
          - regularising * self.entropy_weight * largest * leading_entropy)
      measured = {'score': scores, 'ratio': ratios, 'coefficient': coefficients,
                  'prototype_loss': pce, 'entropy': entropy}
      if self.prototype_update == 'ema':
        everyone = jnp.ones(labels.shape, bool)
        measured['batch_sums'] = {
            m: class_sums(jax.lax.stop_gradient(features[m]), labels, everyone, self.num_classes)
            for m in self.modalities}
      return loss, (outputs, losses, model_state, {**intermediates, self.name: measured})

    return jax.value_and_grad(objective, has_aux=True)(params)

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """The next step's window flags; with ``prototype_update='ema'``, the prototypes."""
    measured = info.aux[self.name]
    next_epoch = (info.step + 1) // self.steps_per_epoch
    state = {**method_state,
             'modulating': in_window(next_epoch, self.starts, self.ends),
             'regularising': self._regularising(next_epoch)}
    if self.prototype_update == 'ema':
      state['prototypes'] = {
          m: ema_prototypes(method_state['prototypes'][m], *measured['batch_sums'][m],
                            self.ema_decay)
          for m in self.modalities}
    metrics = {f'{self.name}/modulating': method_state['modulating'].astype(jnp.float32),
               f'{self.name}/regularising': method_state['regularising'].astype(jnp.float32)}
    for key in ('score', 'ratio', 'coefficient', 'prototype_loss', 'entropy'):
      metrics.update({f'{self.name}/{key}/{m}': v for m, v in measured[key].items()})
    return state, metrics

  # ----- host hooks -----------------------------------------------------------------------------
  def prototype_subset(self, ctx: RunContext, epoch: int) -> Any:
    """The training examples of epoch ``epoch``'s prototype pass: a random
    ``prototype_fraction`` of them (at least one), in index order."""
    train = ctx.dataset.splits['train']
    size = max(1, int(round(self.fraction * len(train))))
    order = np.random.default_rng(derive_seed(self._seed, RNG_STREAM, epoch)).permutation(len(train))
    return train.take(np.sort(order[:size]))

  def on_epoch_start(self, ctx: RunContext, state: Any, epoch: int) -> tuple[Any, dict[str, float]]:
    """New prototypes from a pass over :meth:`prototype_subset` (every epoch; with
    ``prototype_update='ema'``, only before the first)."""
    if self.prototype_update == 'ema' and epoch > 0:
      return state, {}
    totals = ctx.eval_totals(state, self.prototype_subset(ctx, epoch), self._sums_fn)
    previous = jax.device_get(state.method_state['prototypes'])
    prototypes = {m: np.asarray(new_prototypes(*totals['sums'][m], previous[m], self.momentum,
                                               blend=epoch > 0), np.float32)
                  for m in self.modalities}
    method_state = {**state.method_state, 'prototypes': prototypes}
    state = state.replace(method_state=jax.device_put(method_state, ctx.replicated))
    if epoch == 0:
      return state, {}
    count = float(np.sum(totals['sums'][self.modalities[0]][1]))
    return state, {f'{self.name}/prototype_accuracy/{m}': float(totals['correct'][m]) / count
                   for m in self.modalities}


__all__ = ['COEFFICIENTS', 'PROTOTYPE_UPDATES', 'PrototypicalModalRebalance', 'RNG_STREAM',
           'capture_encoder_outputs', 'class_sums', 'ema_prototypes', 'encoder_features',
           'imbalance_ratios', 'new_prototypes', 'prototype_cross_entropy', 'prototype_distances',
           'prototype_entropy', 'prototype_scores', 'rebalance_coefficients']
