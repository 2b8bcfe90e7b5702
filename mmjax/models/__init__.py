"""Models: per-modality encoders and the multi-head classifiers built on them.

:func:`build_model` turns ``config.model`` into a ``flax.linen`` module whose output is a dict
of logits keyed by head (``'fused'`` and every modality).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax

from mmjax.models.encoders import (ENCODERS, MLPEncoder, ResNet18, SmallCNN, build_encoder,
                                   module_options)
from mmjax.models.late_fusion import FUSED, FUSIONS, LateFusionClassifier, scale_gradient
from mmjax.models.mmtm import MMTMClassifier, default_mmtm_stages

PyTree = Any


def build_encoders(encoder_configs: Mapping[str, Mapping[str, Any]], modalities: Sequence[str]
                   ) -> dict[str, nn.Module]:
  """One encoder per modality, in the order of ``modalities``, from ``model.encoders``."""
  for m in encoder_configs:
    if m not in modalities:
      raise ValueError(
          f'model.encoders.{m}: {m!r} is not a modality of this run; its modalities are '
          f'{list(modalities)}.')
  encoders = {}
  for m in modalities:
    if m not in encoder_configs:
      raise ValueError(
          f'modality {m!r} has no encoder: set model.encoders.{m}, e.g. '
          f"{{'name': 'cnn', 'features': 512}}; encoder names are {sorted(ENCODERS)}.")
    try:
      encoders[m] = build_encoder(encoder_configs[m])
    except ValueError as e:
      raise ValueError(f'model.encoders.{m}: {e}') from None
  return encoders


def _build_late_fusion(config: Mapping[str, Any], modalities: Sequence[str], num_classes: int
                       ) -> LateFusionClassifier:
  options = [k for k in module_options(LateFusionClassifier) if k != 'num_classes']
  kwargs = {k: v for k, v in config.items() if k != 'name'}
  for key in kwargs:
    if key not in options:
      raise ValueError(
          f"model.{key} is not an option of model 'late_fusion'; its options are {options}.")
  kwargs['encoders'] = build_encoders(kwargs.get('encoders', {}), modalities)
  if 'fused_hidden' in kwargs:
    kwargs['fused_hidden'] = tuple(kwargs['fused_hidden'])
  return LateFusionClassifier(num_classes=num_classes, **kwargs)


def _build_mmtm(config: Mapping[str, Any], modalities: Sequence[str], num_classes: int
                ) -> MMTMClassifier:
  options = ('encoders', 'mmtm_stages', 'mmtm_ratio')
  for key in config:
    if key != 'name' and key not in options:
      raise ValueError(f"model.{key} is not an option of model 'mmtm'; its options are {list(options)}.")
  encoders = build_encoders(config.get('encoders', {}), modalities)
  stages = config.get('mmtm_stages') or default_mmtm_stages(
      min(e.num_stages for e in encoders.values()))
  return MMTMClassifier(encoders=encoders, num_classes=num_classes,
                        mmtm_stages=tuple(int(i) for i in stages),
                        mmtm_ratio=config.get('mmtm_ratio', 4))


#: ``model.name`` -> builder ``(model_config, modalities, num_classes) -> module``.
MODELS: dict[str, Callable[[Mapping[str, Any], Sequence[str], int], nn.Module]] = {
    'late_fusion': _build_late_fusion,
    'mmtm': _build_mmtm,
}


def build_model(model_config: Mapping[str, Any], modalities: Sequence[str], num_classes: int
                ) -> nn.Module:
  """The model named by ``model_config.name`` for ``modalities`` and ``num_classes`` classes.

  ``model_config.encoders`` must hold exactly one encoder config per modality
  (``{'name': ..., **constructor arguments}``, see :data:`ENCODERS`); the model's modality order
  is the order of ``modalities``.
  """
  name = model_config.get('name')
  if name not in MODELS:
    raise ValueError(f'model.name = {name!r} is not a model; valid models are {sorted(MODELS)}.')
  return MODELS[name](model_config, tuple(modalities), num_classes)


def init_variables(model: nn.Module, rng: jax.Array, example_inputs: Mapping[str, jax.Array]
                   ) -> PyTree:
  """The model's initial variables (``params`` and e.g. ``batch_stats``) from example inputs.

  Runs a jitted ``model.init(rng, example_inputs, train=False)``; only the shapes and dtypes
  of ``example_inputs`` matter.
  """
  return jax.jit(functools.partial(model.init, train=False))(rng, example_inputs)


__all__ = [
    'ENCODERS', 'FUSED', 'FUSIONS', 'MODELS', 'LateFusionClassifier', 'MLPEncoder', 'MMTMClassifier',
    'ResNet18',
    'SmallCNN', 'build_encoder', 'build_encoders', 'build_model', 'init_variables',
    'scale_gradient',
]
