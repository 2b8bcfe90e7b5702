"""The run context: what a method's host hooks and an evaluator may use of a run.

:class:`~mmjax.train.Trainer` builds one :class:`RunContext` once its data, model, method,
optimiser and mesh exist, and hands it to every host hook of the method
(:class:`~mmjax.methods.base.HostHooks`) and to every evaluator
(:mod:`mmjax.evaluators`). Nothing else of the trainer is reachable from there, so a method
or an evaluator written against this class runs under any loop that can fill it in.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

if TYPE_CHECKING:
  import jax
  import ml_collections
  import optax
  from flax import linen as nn
  from jax.sharding import Mesh, NamedSharding

  from mmjax.data import MultiModalDataset, Split


class EvaluateFn(Protocol):
  """``evaluate(state, split, eval_step=None) -> {'loss/<head>': mean, 'accuracy/<head>': mean}``."""

  def __call__(self, state: Any, split: str | Split, eval_step: Callable | None = None
               ) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What one run built once, for the methods' host hooks and the evaluators.

  Attributes:
    config: the run's resolved config (read only).
    seed: the run's seed (``config.seed``).
    dataset: the data set the model trains on, after the method's ``prepare_data``: its
      ``splits`` (``train``, ``val``, ``test``), ``modalities``, ``modality_shapes``,
      ``num_classes``.
    model: the Flax model (``init`` / ``apply`` over a params pytree; ``heads``,
      ``parameter_groups``).
    modalities: the modalities the model takes, in order.
    heads: the model's output heads (``fused`` first, then one per modality).
    input_shapes: modality -> per-example input shape.
    mesh: the device mesh (one ``data`` axis).
    replicated: the sharding that replicates an array over the mesh (``jax.device_put(x,
      ctx.replicated)`` for method state put back into the train state).
    steps_per_epoch: training steps in one epoch.
    train_iterator: the main training batch stream (``step``, ``get_state``); read its position,
      never draw from it.
    tx: the optimiser (an ``optax.GradientTransformation``).
    shard: ``shard(batch)`` puts a host batch ``{'inputs': {m: x}, 'label': y, ...}`` on the mesh.
    put_global: ``put_global(x)`` puts one global host array on the mesh, split over ``data``.
    evaluate: ``evaluate(state, split, eval_step=None)``: mean loss and accuracy per head over a
      whole split (a name or a :class:`~mmjax.data.Split`), with the run's eval step or
      ``eval_step(state, batch, mask)`` returning masked sums.
    eval_totals: ``eval_totals(state, split, sums_fn)``: the sums of the compiled
      ``sums_fn(state, batch, mask)`` over a whole split, on the host.
  """
  config: ml_collections.ConfigDict
  seed: int
  dataset: MultiModalDataset
  model: nn.Module
  modalities: tuple[str, ...]
  heads: tuple[str, ...]
  input_shapes: Mapping[str, tuple[int, ...]]
  mesh: Mesh
  replicated: NamedSharding
  steps_per_epoch: int
  train_iterator: Any
  tx: optax.GradientTransformation
  shard: Callable[[Mapping[str, Any]], dict[str, Any]]
  put_global: Callable[[Any], jax.Array]
  evaluate: EvaluateFn
  eval_totals: Callable[[Any, str | Split, Callable], Any]
