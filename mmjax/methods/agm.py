"""AGM: adaptive gradient modulation from Shapley-style mono-modal responses.

Li, Li, Hu, Lei, Li, Zhou, "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation", ICCV 2023 (official code: lihong2303/AGM, ``model/CREMAD_net.py``,
``run/CREMAD_main.py``; the 3-modality forms in ``model/URFunny_net.py``). The fused
cross-entropy trains the model; its gradient is split into each modality's *mono-modal
response* and each response's share is scaled by a coefficient that pushes the modalities
back toward their long-run balance. The responses come from the whole network with some
inputs zeroed, so any fusion works (late fusion, MMTM mid fusion, a user's model).

Per mini-batch, ``M`` modalities, ``f(S)`` the fused logits with the inputs of the modalities
outside ``S`` replaced by zeros (``f(all)`` the training forward pass):

- mono-modal response (the official code's Shapley form): the Shapley value of modality
  ``m`` in the game ``S -> f(S)`` plus an equal share of the empty coalition,
  ``m_m = sum_{S not containing m} |S|! (M-|S|-1)! / M! [f(S + {m}) - f(S)] + f({}) / M``;
  two modalities: ``m_a = (f(a,v) - f(0,v) + f(a,0)) / 2``. The responses sum to ``f(all)``,
  and ``f({})`` cancels out of every ``m_m`` (so its pass is never run);
- score: ``s_m = mean_i -log max(softmax(m_m,i)[y_i], 1e-8)``, the mono-modal loss;
- ratio: ``r_m = exp(M / (M-1) (mean_k s_k - s_m))`` (two modalities: ``r_a = exp(s_v - s_a)``);
- reference ratio ``r*_m``, the same with the running means
  ``S_m(t) = S_m(t-1) (t-1)/t + s_m(t) / t`` over every step ``t`` since training began,
  taken *before* this step's update (``S_m(0) = 0``, so ``r*_m = 1`` at the first step);
- coefficient: ``k_m = exp(alpha min(r*_m - r_m, cap))``: a modality doing better than its
  history relative to the others (``r_m > r*_m``) is damped, one doing worse is boosted;
- update: back-propagate ``CE(sum_m m_m, y)`` with the gradient reaching ``m_m`` multiplied by
  ``k_m`` (:func:`~mmjax.models.scale_gradient`, the official code's backward hook), so the
  forward value is the fused loss and the encoders' gradients are re-weighted.

The paper's section equations could not be read here (no stored copy of the paper's method
section); the formulas above are the official code's, which the paper's released code
defines. Defaults (``DEFAULTS``) are the official code's: ``alpha = 1.0`` (its argument
default), ``cap = 10`` (CREMA-D; URFunny uses 7, AVE none), modulation in 0-based epochs
``modulation_starts = 0`` to ``modulation_ends = 19`` inclusive (the code's ``0 <= epoch <=
20`` over 1-based epochs: its first 20 epochs), and its gradient clipping (``grad_clip = 1``).

Departures, each a documented choice:

- Eval-mode passes: like the official code, the masked passes ``f(S)``, ``S != all``, run the
  network in evaluation mode (BatchNorm on running averages, no dropout) *with* gradients,
  on the running averages as the training pass has just updated them (PyTorch updates them
  in the training forward, which runs first); the running averages themselves are not
  differentiated. ``f({})`` is not run (it cancels); the official code runs it unused.
- Outside the window no gradient is modulated (``k = 1``); the official code keeps its hooks'
  last coefficients after ``modulation_ends``. The running means are updated in every step,
  in the window or not, as in the code.
- Gradient clipping (``grad_clip``): the official AGM step clips the global gradient norm to 1
  whenever an entry of the fused classifier's weight gradient leaves ``[-1, 1]``; we do the
  same with threshold and norm ``grad_clip`` (the parameters labelled ``head/fused`` with two
  or more axes; in a model without them, e.g. MMTM, every ``head/*`` kernel), PyTorch's
  ``clip_grad_norm_`` factor ``grad_clip / (norm + 1e-6)``. ``grad_clip = 0`` turns it off.
- Probes: with the late-fusion model the per-modality heads are probes (trained on detached
  features, as in ``vanilla``); in other models (MMTM, whose fused prediction is the mean of
  the branch heads) every head is part of the fused prediction and the AGM loss alone trains.
- More than two modalities: the general Shapley form above (the official code has it for
  three); a step runs ``2^M - 2`` masked passes besides the training pass.

Everything is inside the one compiled step: responses, scores, ratios and coefficients from
the batch; the running means ``method_state['score_means']`` and the window flag
``method_state['modulating']`` are arrays, so entering or leaving the window never recompiles.

Logged per step (epoch means): ``agm/score/<m>``, ``agm/ratio/<m>``,
``agm/reference_ratio/<m>``, ``agm/coefficient/<m>`` (computed in every step, applied when
``agm/modulating`` is 1), ``agm/clipped`` (the share of steps whose gradient was clipped).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import logging

from mmjax.context import RunContext
from mmjax.methods import register
from mmjax.methods.base import Method, StepInfo
from mmjax.methods.ogm_ge import in_window, modulation_window
from mmjax.models import groups
from mmjax.models.late_fusion import LateFusionClassifier, scale_gradient

Array = jax.Array
PyTree = Any

MIN_PROBABILITY = 1e-8
"""The official code's floor on the true-class probability in a score (``-log 1e-8``)."""


def coalitions(modalities: Sequence[str]) -> tuple[frozenset[str], ...]:
  """Every non-empty subset of ``modalities`` (the full set last): the passes ``f(S)`` that
  :func:`mono_modal_responses` reads."""
  subsets = [frozenset(c) for size in range(1, len(modalities) + 1)
             for c in itertools.combinations(modalities, size)]
  return tuple(subsets)


def shapley_weight(coalition_size: int, num_modalities: int) -> float:
  """``|S|! (M - |S| - 1)! / M!``: the weight of ``f(S + {m}) - f(S)`` in modality ``m``'s
  Shapley value."""
  return (math.factorial(coalition_size) * math.factorial(num_modalities - coalition_size - 1)
          / math.factorial(num_modalities))


def mono_modal_responses(logits: Mapping[frozenset[str], Array],
                         modalities: Sequence[str]) -> dict[str, Array]:
  """``m_m = sum_{S not containing m} w(|S|) [f(S + {m}) - f(S)] + f({}) / M`` (module docstring).

  ``logits`` maps each non-empty coalition ``S`` (:func:`coalitions`) to ``f(S)``; ``f({})``
  cancels and is not needed. Two modalities: ``m_a = (f(a,v) - f(0,v) + f(a,0)) / 2``.
  """
  num = len(modalities)
  if num < 2:
    raise ValueError(f'mono-modal responses need two or more modalities; got {list(modalities)}.')
  out = {}
  for m in modalities:
    total = None
    for coalition, z in logits.items():
      if not coalition:
        continue
      if m in coalition:
        c = shapley_weight(len(coalition) - 1, num)
      else:
        c = -shapley_weight(len(coalition), num)
      term = c * z
      total = term if total is None else total + term
    out[m] = total
  return out


def response_scores(responses: Mapping[str, Array], labels: Array) -> dict[str, Array]:
  """``s_m = mean_i -log max(softmax(m_m,i)[y_i], 1e-8)``: each response's mean loss."""
  floor = math.log(MIN_PROBABILITY)
  out = {}
  for m, z in responses.items():
    log_p = jnp.take_along_axis(jax.nn.log_softmax(z.astype(jnp.float32), axis=-1),
                                labels[:, None], axis=-1)[:, 0]
    out[m] = -jnp.maximum(log_p, floor).mean()
  return out


def response_ratios(scores: Mapping[str, Array]) -> dict[str, Array]:
  """``r_m = exp(M / (M - 1) (mean_k s_k - s_m))``; two modalities: ``r_a = exp(s_v - s_a)``."""
  num = len(scores)
  if num < 2:
    raise ValueError(f'AGM ratios need two or more modalities; got {list(scores)}.')
  mean = sum(scores.values()) / num
  return {m: jnp.exp(num / (num - 1) * (mean - s)) for m, s in scores.items()}


def update_running_means(means: Mapping[str, Array], scores: Mapping[str, Array],
                         iteration: Array) -> dict[str, Array]:
  """``S_m(t) = S_m(t-1) (t-1)/t + s_m / t`` at 1-based iteration ``t``."""
  t = jnp.asarray(iteration, jnp.float32)
  return {m: means[m] * (t - 1) / t + scores[m] / t for m in means}


def modulation_coefficients(ratios: Mapping[str, Array], reference_ratios: Mapping[str, Array],
                            alpha: float, cap: float) -> dict[str, Array]:
  """``k_m = exp(alpha min(r*_m - r_m, cap))``."""
  return {m: jnp.exp(alpha * jnp.minimum(reference_ratios[m] - r, cap)) for m, r in ratios.items()}


def clip_leaves(labels: PyTree, params: PyTree) -> PyTree:
  """Per leaf, whether it is a fused-classifier weight the clipping trigger watches: leaves
  labelled ``head/fused`` with two or more axes; if there are none, every ``head/*`` one."""
  fused = groups.label(groups.HEAD, 'fused')
  watched = jax.tree.map(lambda g, p: g == fused and jnp.ndim(p) >= 2, labels, params)
  if any(jax.tree.leaves(watched)):
    return watched
  return jax.tree.map(lambda g, p: groups.kind_of(g) == groups.HEAD and jnp.ndim(p) >= 2,
                      labels, params)


def clip_gradients(grads: PyTree, watched: PyTree, threshold: float) -> tuple[PyTree, Array]:
  """The official AGM step's clipping: when an entry of a watched gradient leaf is outside
  ``[-threshold, threshold]``, every gradient is multiplied by
  ``min(1, threshold / (||g|| + 1e-6))`` (PyTorch's ``clip_grad_norm_``, ``||g||`` the global
  L2 norm). Returns the gradients and whether the trigger fired."""
  largest = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g, w in zip(
      jax.tree.leaves(grads), jax.tree.leaves(watched)) if w]))
  triggered = largest > threshold
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(grads)))
  factor = jnp.where(triggered, jnp.minimum(1.0, threshold / (norm + 1e-6)), 1.0)
  return jax.tree.map(lambda g: (g * factor).astype(g.dtype), grads), triggered


def masked_inputs(inputs: Mapping[str, Array], coalition: frozenset[str]) -> dict[str, Array]:
  """The inputs with every modality outside ``coalition`` replaced by zeros."""
  return {m: x if m in coalition else jnp.zeros_like(x) for m, x in inputs.items()}


@register
class AdaptiveGradientModulation(Method):
  """AGM over any multi-modal model (module docstring): the fused loss, gradient re-weighted."""

  name = 'agm'
  DEFAULTS = {
      'alpha': 1.0,
      'cap': 10.0,  # upper bound on r*_m - r_m inside the exponential
      'modulation_starts': 0,  # first modulated epoch, 0-based
      'modulation_ends': 19,  # last modulated epoch, inclusive (official: 1-based 1..20)
      'grad_clip': 1.0,  # official clipping threshold and norm; 0 turns clipping off
  }

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    cfg = {**self.DEFAULTS, **dict(config)}
    for key in ('alpha', 'cap', 'grad_clip'):
      value = cfg[key]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
          math.isfinite(value) and value >= 0):
        raise ValueError(f'method.{key} = {value!r} must be a finite non-negative number.')
    self.alpha, self.cap, self.grad_clip = (float(cfg[k]) for k in ('alpha', 'cap', 'grad_clip'))
    self.starts, self.ends = modulation_window(cfg)
    if len(self.modalities) < 2:
      raise ValueError(f'AGM needs two or more modalities; got {list(self.modalities)}.')
    self.steps_per_epoch = 1
    self.probes = True
    self._model = None
    self._parameter_groups: Callable[[PyTree], PyTree] | None = None

  def setup(self, ctx: RunContext) -> None:
    if ctx.config.optimizer.name != 'sgd':
      logging.warning(
          'AGM scales gradients; optimizer.name = %r normalises gradient scale per parameter '
          "and largely cancels the modulation (the paper uses SGD: optimizer.name = 'sgd').",
          ctx.config.optimizer.name)
    if 'fused' not in ctx.heads:
      raise ValueError(f"method 'agm' needs a model with a 'fused' head; its heads are "
                       f'{list(ctx.heads)}.')
    self.steps_per_epoch = ctx.steps_per_epoch
    self.probes = isinstance(ctx.model, LateFusionClassifier)
    self._model = ctx.model
    self._parameter_groups = ctx.model.parameter_groups

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 if h == 'fused' else 0.0 for h in self.heads}

  def init_state(self) -> dict[str, PyTree]:
    return {**super().init_state(),
            'score_means': {m: jnp.float32(0.0) for m in self.modalities},
            'modulating': in_window(0, self.starts, self.ends)}

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    if self.probes:
      return super().model_kwargs(method_state, rng)
    return {}

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """The gradient of ``CE(sum_m m_m)`` with ``m_m``'s share scaled by ``k_m``, plus the probes'."""
    labels = batch['label']

    def objective(p):
      _, (outputs, losses, model_state, intermediates) = loss_fn(p, batch)
      variables = {'params': p, **jax.lax.stop_gradient(model_state)}
      logits = {}
      for coalition in coalitions(self.modalities):
        if len(coalition) == len(self.modalities):
          logits[coalition] = outputs['fused']
        else:
          logits[coalition] = self._model.apply(
              variables, masked_inputs(batch['inputs'], coalition), train=False)['fused']
      responses = mono_modal_responses(logits, self.modalities)
      measured = jax.lax.stop_gradient(responses)
      scores = response_scores(measured, labels)
      ratios = response_ratios(scores)
      reference = response_ratios(method_state['score_means'])
      coefficients = modulation_coefficients(ratios, reference, self.alpha, self.cap)
      applied = {m: jnp.where(method_state['modulating'], k, 1.0) for m, k in coefficients.items()}
      fused = sum(scale_gradient(responses[m], applied[m]) for m in self.modalities)
      loss = optax.softmax_cross_entropy_with_integer_labels(fused, labels).mean()
      if self.probes:
        loss = loss + sum(losses[h] for h in self.heads if h != 'fused')
      intermediates = {**intermediates, self.name: {
          'score': scores, 'ratio': ratios, 'reference_ratio': reference,
          'coefficient': coefficients}}
      return loss, (outputs, losses, model_state, intermediates)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
    clipped = jnp.bool_(False)
    if self.grad_clip > 0:
      watched = clip_leaves(self._parameter_groups(params), params)
      grads, clipped = clip_gradients(grads, watched, self.grad_clip)
    outputs, losses, model_state, intermediates = aux
    intermediates = {**intermediates,
                     self.name: {**intermediates[self.name], 'clipped': clipped}}
    return (loss, (outputs, losses, model_state, intermediates)), grads

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """The running means with this step's scores, and the next step's window flag."""
    measured = info.aux[self.name]
    next_epoch = (info.step + 1) // self.steps_per_epoch
    state = {**method_state,
             'score_means': update_running_means(method_state['score_means'], measured['score'],
                                                 info.step + 1),
             'modulating': in_window(next_epoch, self.starts, self.ends)}
    metrics = {f'{self.name}/modulating': method_state['modulating'].astype(jnp.float32),
               f'{self.name}/clipped': measured['clipped'].astype(jnp.float32)}
    for key in ('score', 'ratio', 'reference_ratio', 'coefficient'):
      metrics.update({f'{self.name}/{key}/{m}': v for m, v in measured[key].items()})
    return state, metrics


__all__ = ['AdaptiveGradientModulation', 'MIN_PROBABILITY', 'clip_gradients', 'clip_leaves',
           'coalitions', 'masked_inputs', 'modulation_coefficients', 'mono_modal_responses',
           'response_ratios', 'response_scores', 'shapley_weight', 'update_running_means']
