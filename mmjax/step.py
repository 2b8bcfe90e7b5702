"""The train and eval steps, built once per run from (model, method, optimizer).

The functions built here are pure; :mod:`mmjax.train` compiles each with ``jax.jit`` once.
Methods that run several copies of training at once (G-Blend's estimation runs) ``vmap``
the same pure functions over stacked train states.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax.methods.base import Method, StepInfo, blended_loss

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the checkpoint holds all of it."""
  step: Array
  params: PyTree
  model_state: PyTree  # non-parameter collections, e.g. {'batch_stats': ...}
  opt_state: PyTree
  method_state: PyTree
  rng: Array


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def head_losses(outputs: Mapping[str, Array], labels: Array) -> dict[str, Array]:
  """Mean cross-entropy of every head."""
  return {h: cross_entropy(logits, labels).mean() for h, logits in outputs.items()}


def head_accuracies(outputs: Mapping[str, Array], labels: Array) -> dict[str, Array]:
  return {h: (logits.argmax(-1) == labels).mean() for h, logits in outputs.items()}


def forward(model: nn.Module, params: PyTree, model_state: PyTree, inputs: Mapping[str, Array], *,
            train: bool, rng: Array | None = None, **kwargs: Any
            ) -> tuple[dict[str, Array], PyTree, PyTree]:
  """Applies the model; returns ``(outputs, new_model_state, intermediates)``.

  In training, the non-parameter collections (BatchNorm statistics) are updated, and
  whatever the model ``sow``s into ``intermediates`` comes back for the method.
  """
  variables = {'params': params, **model_state}
  if not train:
    return model.apply(variables, inputs, train=False, **kwargs), model_state, {}
  rngs = {'dropout': rng} if rng is not None else {}
  outputs, mutated = model.apply(
      variables, inputs, train=True, rngs=rngs,
      mutable=[*model_state.keys(), 'intermediates'], **kwargs)
  mutated = dict(mutated)
  intermediates = mutated.pop('intermediates', {})
  return outputs, mutated, intermediates


def make_train_step(model: nn.Module, method: Method, tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, dict[str, Array]]]:
  """The pure train step ``(state, batch) -> (state, metrics)``.

  Metrics per step: ``loss/<head>``, ``accuracy/<head>``, ``objective`` (the blended loss
  ``sum_h w_h CE_h``) and whatever the method adds.
  """

  def train_step(state: TrainState, batch: Mapping[str, Any]):
    dropout_rng, method_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    model_kwargs = method.model_kwargs(state.method_state, method_rng)

    def loss_fn(params, batch, rng=dropout_rng):
      outputs, model_state, intermediates = forward(
          model, params, state.model_state, batch['inputs'], train=True, rng=rng,
          **model_kwargs)
      losses = head_losses(outputs, batch['label'])
      loss = method.objective(losses, state.method_state)
      return loss, (outputs, losses, model_state, intermediates)

    (_, (outputs, losses, model_state, intermediates)), grads, params, opt_state = (
        method.optimizer_update(tx, loss_fn, state.params, state.opt_state, batch,
                                state.method_state, state.step))
    objective = blended_loss(losses, state.method_state['weights'])
    method_state, method_metrics = method.update_state(
        state.method_state,
        StepInfo(step=state.step, params=state.params, new_params=params, grads=grads,
                 outputs=outputs, losses=losses, aux=intermediates))
    metrics = {'objective': objective}
    metrics.update({f'loss/{h}': l for h, l in losses.items()})
    metrics.update({f'accuracy/{h}': a for h, a in head_accuracies(outputs, batch['label']).items()})
    metrics.update(method_metrics)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                              opt_state=opt_state, method_state=method_state)
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, method: Method
                   ) -> Callable[[TrainState, Mapping[str, Any], Array], dict[str, Array]]:
  """The pure eval step ``(state, batch, mask) -> sums``.

  Returns per-head sums of the loss and of correct predictions over the real (``mask``)
  rows, plus ``count``; :func:`finalize_eval` turns accumulated sums into means.
  """

  def eval_step(state: TrainState, batch: Mapping[str, Any], mask: Array):
    outputs, _, _ = forward(model, state.params, state.model_state, batch['inputs'], train=False,
                            **method.eval_model_kwargs(state.method_state))
    return eval_sums(outputs, batch['label'], mask)

  return eval_step


def eval_sums(outputs: Mapping[str, Array], labels: Array, mask: Array) -> dict[str, Array]:
  """Masked sums of loss and correct predictions per head (for exact means over padding)."""
  weight = mask.astype(jnp.float32)
  sums = {'count': weight.sum()}
  for h, logits in outputs.items():
    sums[f'loss/{h}'] = (cross_entropy(logits, labels) * weight).sum()
    sums[f'accuracy/{h}'] = ((logits.argmax(-1) == labels) * weight).sum()
  return sums


def finalize_eval(sums: Mapping[str, Any]) -> dict[str, float]:
  """Means from accumulated :func:`eval_sums`."""
  count = float(sums['count'])
  return {k: float(v) / count for k, v in sums.items() if k != 'count'}
