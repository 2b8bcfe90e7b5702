"""The interface every balancing method implements: :class:`Method` = :class:`StepPieces` +
:class:`HostHooks`.

- :class:`StepPieces` run inside the one compiled train step: the method's state, the keyword
  arguments it passes to the model, the objective it builds from the per-head losses, how it
  computes gradients, how it applies them (one optimiser update unless the method says
  otherwise), how it updates its own state. They see arrays only.
- :class:`HostHooks` run on the host: config and data set-up, and work between epochs
  (G-Blend's weight estimation), which may call compiled functions. They see the run's
  :class:`~mmjax.context.RunContext`, never the trainer. Evaluations beyond loss and accuracy
  are evaluators (:mod:`mmjax.evaluators`), listed in ``config.evals``.

A method also declares its config options (``DEFAULTS``: every scalar one is a config-file
argument, ``configs/X.py:method=NAME,KEY=VALUE``) and its report plots (``PLOTS``: names of
:mod:`mmjax.report` plot functions, written to the run's ``summary.json``). Register a method
of your own with :func:`mmjax.methods.register`.

Every method keeps its per-head loss weights as arrays in ``method_state['weights']``, so a
change of weight never retraces the step. The objective follows one rule for all methods:

- a head with weight ``w > 0`` contributes ``w * CE`` and back-propagates into the encoders;
- a head with weight ``0`` is a *probe*: it still learns, from ``CE`` on ``stop_gradient``
  features, so every run reports how well each modality's features alone classify, without
  any effect on the encoders.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
  from mmjax.context import RunContext

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What the train step hands to :meth:`Method.update_state` after computing gradients."""
  step: Array
  params: PyTree  # parameters before the update
  new_params: PyTree
  grads: PyTree
  outputs: Mapping[str, Array]
  losses: Mapping[str, Array]
  aux: Mapping[str, Any]  # the model's 'intermediates' (e.g. MMTM scales), plus what gradients() added


def validate_weights(weights: Mapping[str, float], heads: Sequence[str], key: str) -> dict[str, float]:
  """Checks user-given per-head weights: known heads, finite, non-negative, one positive."""
  unknown = [h for h in weights if h not in heads]
  if unknown:
    raise ValueError(f'{key}: no head named {unknown[0]!r}; valid heads are {list(heads)}.')
  out = {}
  for h in heads:
    w = float(weights.get(h, 0.0))
    if not jnp.isfinite(w) or w < 0:
      raise ValueError(f'{key}.{h} = {w!r}: weights must be finite and non-negative.')
    out[h] = w
  if not any(w > 0 for w in out.values()):
    raise ValueError(f'{key}: at least one head needs a positive weight; got {out}.')
  return out


def probe_objective(losses: Mapping[str, Array], weights: Mapping[str, Array]) -> Array:
  """The differentiated loss: ``w_h * CE_h`` for weighted heads, ``CE_h`` for probe heads."""
  return sum(jnp.where(weights[h] > 0, weights[h], 1.0) * losses[h] for h in losses)


def blended_loss(losses: Mapping[str, Array], weights: Mapping[str, Array]) -> Array:
  """The blended training objective ``sum_h w_h CE_h`` (probe terms left out)."""
  return sum(weights[h] * losses[h] for h in losses)


def head_grad_scales(weights: Mapping[str, Array]) -> dict[str, Array]:
  """1 where a head back-propagates into the encoders, 0 for probe heads."""
  return {h: (w > 0).astype(jnp.float32) for h, w in weights.items()}


class StepPieces:
  """The pieces of the compiled train step (traced; method state is a pytree of arrays)."""

  heads: tuple[str, ...]

  def initial_weights(self) -> dict[str, float]:
    """Per-head loss weights at the start of training."""
    raise NotImplementedError

  def init_state(self) -> dict[str, PyTree]:
    """The method's state: a pytree of arrays that lives in the train state and checkpoint."""
    return {'weights': {h: jnp.float32(w) for h, w in self.initial_weights().items()}}

  def model_kwargs(self, method_state: PyTree, rng: Array) -> dict[str, Any]:
    """Keyword arguments for the model's training forward pass (traced arrays only)."""
    del rng
    return {'head_grad_scale': head_grad_scales(method_state['weights'])}

  def eval_model_kwargs(self, method_state: PyTree) -> dict[str, Any]:
    """Keyword arguments for the model's evaluation forward pass."""
    del method_state
    return {}

  def objective(self, losses: Mapping[str, Array], method_state: PyTree) -> Array:
    """The differentiated loss (:func:`probe_objective`)."""
    return probe_objective(losses, method_state['weights'])

  def gradients(self, loss_fn: Callable, params: PyTree, batch: Mapping[str, Any],
                method_state: PyTree) -> tuple[tuple[Array, Any], PyTree]:
    """``((loss, aux), grads)`` of ``loss_fn(params, batch)``; methods may compute more.

    ``loss_fn(params, batch, rng=key)`` runs the forward pass with dropout key ``key``.
    ``aux`` is ``(outputs, losses, model_state, intermediates)``; a method adds what it
    measures to ``intermediates`` under its name and reads it in :meth:`update_state`.
    """
    del method_state
    return jax.value_and_grad(loss_fn, has_aux=True)(params, batch)

  def optimizer_update(self, tx: optax.GradientTransformation, loss_fn: Callable, params: PyTree,
                       opt_state: PyTree, batch: Mapping[str, Any], method_state: PyTree,
                       step: Array) -> tuple[tuple[Array, Any], PyTree, PyTree, PyTree]:
    """``((loss, aux), grads, new_params, new_opt_state)``: :meth:`gradients`, then one update
    of ``tx`` with ``value=`` the blended loss. A method that updates several times per batch
    (MLA's alternating uni-modal updates) overrides this; ``step`` is the train step's count."""
    del step
    (loss, aux), grads = self.gradients(loss_fn, params, batch, method_state)
    objective = blended_loss(aux[1], method_state['weights'])
    updates, opt_state = tx.update(grads, opt_state, params, value=objective)
    return (loss, aux), grads, optax.apply_updates(params, updates), opt_state

  def update_state(self, method_state: PyTree, info: StepInfo) -> tuple[PyTree, dict[str, Array]]:
    """The method's new state and per-step metrics (averaged over each epoch when logged)."""
    del info
    return method_state, {}


class HostHooks:
  """The host-side hooks; those that run during training get the run's :class:`RunContext`."""

  name: ClassVar[str]
  heads: tuple[str, ...]

  @classmethod
  def adjust_config(cls, config: Any) -> None:
    """Adapts a config built by a config file to this method, in place (e.g. the model or
    ``config.evals`` it needs); called after ``config.method`` is set."""
    del config

  @classmethod
  def model_modalities(cls, config: Mapping[str, Any], modalities: Sequence[str]) -> tuple[str, ...]:
    """The modalities the model is built with (all of them unless a method says otherwise)."""
    del config
    return tuple(modalities)

  @classmethod
  def reads_num_epochs(cls, config: Mapping[str, Any]) -> bool:
    """Whether the method's training depends on ``num_epochs`` (then a resume may not grow it)."""
    del config
    return False

  def prepare_data(self, dataset: Any, seed: int) -> Any:
    """May replace the data set before training (G-Blend carves out its held-out slice)."""
    del seed
    return dataset

  @property
  def selection_head(self) -> str:
    """The head whose validation accuracy selects the best checkpoint."""
    return 'fused'

  def setup(self, ctx: RunContext) -> None:
    """Once the run has its data, model and iterator, before any step is traced."""
    del ctx

  def extend_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    """May add method-specific entries to each training batch (numpy)."""
    return batch

  def on_epoch_start(self, ctx: RunContext, state: Any, epoch: int) -> tuple[Any, dict[str, float]]:
    """Before epoch ``epoch`` (0-based): the new train state and metrics to log."""
    del ctx, epoch
    return state, {}

  def on_resume_within_epoch(self, ctx: RunContext, state: Any, epoch: int) -> None:
    """After a resume inside epoch ``epoch``: host-side positions only (the train state, with
    the effect of that epoch's :meth:`on_epoch_start`, comes from the checkpoint)."""
    del ctx, state, epoch

  def state_metrics(self, method_state: PyTree) -> dict[str, Array]:
    """Metrics logged with the train split at the end of every epoch."""
    return {f'{self.name}/weight/{h}': w for h, w in method_state['weights'].items()}


class Method(StepPieces, HostHooks):
  """A balancing method: fixed weights from :meth:`initial_weights`, plain gradients."""

  name: ClassVar[str] = ''
  #: The method's config options and their defaults (besides ``name``).
  DEFAULTS: ClassVar[dict[str, Any]] = {}
  #: The report plots (names in :data:`mmjax.report.PLOT_FUNCTIONS`) besides accuracy and loss.
  PLOTS: ClassVar[tuple[str, ...]] = ()

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    self.config = config
    self.heads = tuple(heads)
    self.modalities = tuple(modalities)
