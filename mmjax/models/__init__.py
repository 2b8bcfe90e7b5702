"""Models: per-modality encoders and the multi-head classifiers built on them.

:func:`build_model` turns ``config.model`` into a ``flax.linen`` module whose output is a dict
of logits keyed by head (``'fused'`` and every modality). Encoders come from
:data:`ENCODERS` by name (:func:`register_encoder` adds a user's class) or as module objects
(``build_model(..., encoders={m: module})``); :func:`config_with_objects` records such objects,
or a whole model of the user's, in the run's config (``docs/your_model.md``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.models import groups
from mmjax.models.encoders import ENCODERS, MLPEncoder, ResNet18, SmallCNN, StagedEncoder
from mmjax.models.late_fusion import (DTYPES, FUSED, FUSIONS, LateFusionClassifier, check_dtype,
                                      scale_gradient, with_compute_dtype)
from mmjax.models.mmtm import MMTMClassifier, default_mmtm_stages
from mmjax.models.registry import (OBJECT, build_encoder, check_features_encoder,
                                   check_staged_encoder, describe, encoder_args, encoder_config,
                                   encoder_sections, module_options, register_encoder)
from mmjax.models.resnet import ResNet18Frames, ResNet18Image, ResNet18Spectrogram

PyTree = Any


def build_encoders(encoder_configs: Mapping[str, Mapping[str, Any]], modalities: Sequence[str],
                   objects: Mapping[str, nn.Module] | None = None) -> dict[str, nn.Module]:
  """One encoder per modality, in the order of ``modalities``: ``objects[m]`` where given, else
  built from ``model.encoders.<m>``."""
  objects = objects or {}
  for m in encoder_configs:
    if m not in modalities:
      raise ValueError(
          f'model.encoders.{m}: {m!r} is not a modality of this run; its modalities are '
          f'{list(modalities)}.')
  encoders = {}
  for m in modalities:
    if m in objects:
      encoders[m] = objects[m]
      continue
    if m not in encoder_configs:
      raise ValueError(
          f'modality {m!r} has no encoder: set model.encoders.{m}, e.g. '
          f"{{'name': 'cnn', 'features': 512}}; encoder names are {sorted(ENCODERS)}.")
    try:
      encoders[m] = build_encoder(encoder_configs[m], m)
    except ValueError as e:
      raise ValueError(f'model.encoders.{m}: {e}') from None
  return encoders


def _build_late_fusion(config: Mapping[str, Any], modalities: Sequence[str], num_classes: int,
                       objects: Mapping[str, nn.Module]) -> LateFusionClassifier:
  options = [k for k in module_options(LateFusionClassifier) if k != 'num_classes']
  kwargs = {k: v for k, v in config.items() if k != 'name'}
  for key in kwargs:
    if key not in options:
      raise ValueError(
          f"model.{key} is not an option of model 'late_fusion'; its options are {options}.")
  check_dtype(kwargs.get('dtype', 'float32'))
  kwargs['encoders'] = with_compute_dtype(
      build_encoders(kwargs.get('encoders', {}), modalities, objects),
      kwargs.get('dtype', 'float32'))
  for m, encoder in kwargs['encoders'].items():
    check_features_encoder(m, encoder)
  if 'fused_hidden' in kwargs:
    kwargs['fused_hidden'] = tuple(kwargs['fused_hidden'])
  return LateFusionClassifier(num_classes=num_classes, **kwargs)


def _build_mmtm(config: Mapping[str, Any], modalities: Sequence[str], num_classes: int,
                objects: Mapping[str, nn.Module]) -> MMTMClassifier:
  options = ('encoders', 'mmtm_stages', 'mmtm_ratio', 'dtype')
  for key in config:
    if key != 'name' and key not in options:
      raise ValueError(f"model.{key} is not an option of model 'mmtm'; its options are {list(options)}.")
  dtype = config.get('dtype', 'float32')
  check_dtype(dtype)
  encoders = with_compute_dtype(build_encoders(config.get('encoders', {}), modalities, objects),
                                dtype)
  num_stages = {m: len(check_staged_encoder(m, e)) for m, e in encoders.items()}
  stages = config.get('mmtm_stages') or default_mmtm_stages(min(num_stages.values()))
  return MMTMClassifier(encoders=encoders, num_classes=num_classes,
                        mmtm_stages=tuple(int(i) for i in stages),
                        mmtm_ratio=config.get('mmtm_ratio', 4), dtype=dtype)


#: ``model.name`` -> builder ``(model_config, modalities, num_classes, encoder_objects) -> module``.
MODELS: dict[str, Callable[[Mapping[str, Any], Sequence[str], int, Mapping[str, nn.Module]],
                           nn.Module]] = {
    'late_fusion': _build_late_fusion,
    'mmtm': _build_mmtm,
}


def build_model(model_config: Mapping[str, Any], modalities: Sequence[str], num_classes: int,
                encoders: Mapping[str, nn.Module] | None = None) -> nn.Module:
  """The model named by ``model_config.name`` for ``modalities`` and ``num_classes`` classes.

  ``model_config.encoders`` must hold one encoder config per modality not in ``encoders``
  (``{'name': ..., **constructor arguments}``, see :data:`ENCODERS`); ``encoders`` maps a
  modality to an encoder object used as it is. ``model_config.dtype`` (:data:`DTYPES`, default
  ``'float32'``) is the compute dtype of the heads and fusion and of every encoder whose class
  declares a ``dtype`` field left at ``None``; parameters stay float32, logits come out float32. The model's modality order is the order of
  ``modalities``. Each encoder is checked against the model's contract
  (:func:`check_features_encoder`; :func:`check_staged_encoder` for ``'mmtm'``).
  """
  name = model_config.get('name')
  if name == OBJECT:
    raise ValueError(
        f"model describes a model object of class {model_config.get('class', '?')} passed from "
        'Python, which a config cannot build; pass the object again: '
        'train_and_evaluate(config, workdir, model=...).')
  if name not in MODELS:
    raise ValueError(f'model.name = {name!r} is not a model; valid models are {sorted(MODELS)}.')
  unknown = [m for m in encoders or {} if m not in modalities]
  if unknown:
    raise ValueError(f'encoders: {unknown[0]!r} is not a modality of this run; its modalities are '
                     f'{list(modalities)}.')
  return MODELS[name](model_config, tuple(modalities), num_classes, encoders or {})


def config_with_objects(config: ml_collections.ConfigDict, *,
                        encoders: Mapping[str, nn.Module] | None = None,
                        model: nn.Module | None = None) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose ``model`` section describes the objects passed from Python.

  ``model.encoders.<m>`` becomes :func:`describe` of ``encoders[m]``, or ``model`` becomes that
  of a whole model. The run's ``config.json`` then names each object's class and options, so a
  resume with a different object is refused as any other run-defining difference.
  """
  if encoders and model is not None:
    raise ValueError('pass encoders= or model=, not both: a whole model holds its own encoders.')
  config = copy.deepcopy(config)
  with config.unlocked():
    if model is not None:
      if not isinstance(model, nn.Module):
        raise ValueError(f'model= is a {type(model).__name__}, not a flax.linen Module.')
      config.model = ml_collections.ConfigDict(describe(model))
    for m, encoder in (encoders or {}).items():
      check_features_encoder(m, encoder)
      sections = config.model.get('encoders') or {}
      if isinstance(sections, ml_collections.ConfigDict):
        sections = sections.to_dict()
      sections = dict(sections)
      sections[m] = describe(encoder)
      config.model.encoders = sections
  return config


def check_model(model: nn.Module, modalities: Sequence[str], num_classes: int,
                input_shapes: Mapping[str, Sequence[int]]) -> None:
  """Checks a whole model of the user's against what every method relies on.

  The contract (``docs/your_model.md``): ``model.heads``, the output keys, ``'fused'`` then one
  head per modality; ``model.apply(variables, inputs, train=..., head_grad_scale=...)`` returns
  ``{head: [B, num_classes]}``; ``model.parameter_groups(params)`` labels every parameter leaf
  with a label of :mod:`mmjax.models.groups` (``'branch/<m>'`` for every modality ``m``).
  """
  if not isinstance(model, nn.Module):
    raise ValueError(f'model= is a {type(model).__name__}, not a flax.linen Module.')
  name = type(model).__name__
  for attribute in ('heads', 'parameter_groups'):
    if not hasattr(model, attribute):
      raise ValueError(f'model {name} has no {attribute}; a model of your own needs heads and '
                       'parameter_groups(params) (see docs/your_model.md).')
  heads = tuple(model.heads)
  if heads != (FUSED, *modalities):
    raise ValueError(f'model {name}: heads = {heads}; this run needs {(FUSED, *modalities)}, '
                     "'fused' then one head per modality.")
  example = {m: jax.ShapeDtypeStruct((2, *s), jnp.float32) for m, s in input_shapes.items()}

  def init_and_apply(x):
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    scales = {h: jnp.float32(1.0) for h in heads}
    return variables['params'], model.apply(variables, x, train=False, head_grad_scale=scales)

  params, outputs = jax.eval_shape(init_and_apply, example)
  shapes = {h: tuple(o.shape) for h, o in outputs.items()} if isinstance(outputs, Mapping) else None
  if (shapes is None or set(shapes) != set(heads)
      or any(s != (2, num_classes) for s in shapes.values())):
    raise ValueError(f'model {name} returns {shapes or type(outputs).__name__}; it must return '
                     f'{{head: [batch, {num_classes}]}} for the heads {list(heads)}.')
  check_parameter_groups(model.parameter_groups(params), params, modalities, heads)


def check_parameter_groups(labels: Any, params: Any, modalities: Sequence[str],
                           heads: Sequence[str]) -> None:
  """Checks that ``labels`` (a model's ``parameter_groups(params)``) is a tree of the structure
  of ``params`` holding valid labels, with a ``'branch/<m>'`` group for every modality."""
  valid = ({groups.label(groups.BRANCH, m) for m in modalities}
           | {groups.label(groups.HEAD, h) for h in heads}
           | {groups.label(groups.FUSION, m) for m in modalities} | {groups.FUSION})
  if jax.tree.structure(labels) != jax.tree.structure(params):
    raise ValueError('parameter_groups(params) must return a tree of the structure of params with '
                     f'one label per leaf; got {jax.tree.structure(labels)}.')
  found = set(jax.tree.leaves(labels))
  bad = sorted(str(g) for g in found if g not in valid)
  if bad:
    raise ValueError(f'parameter_groups: label {bad[0]!r} is not a group; valid labels are '
                     f'{sorted(valid)}.')
  missing = [m for m in modalities if groups.label(groups.BRANCH, m) not in found]
  if missing:
    raise ValueError(f"parameter_groups: no parameter is labelled 'branch/{missing[0]}'; every "
                     "modality's encoder parameters are its branch.")


def init_variables(model: nn.Module, rng: jax.Array, example_inputs: Mapping[str, jax.Array]
                   ) -> PyTree:
  """The model's initial variables (``params`` and e.g. ``batch_stats``) from example inputs.

  Runs a jitted ``model.init(rng, example_inputs, train=False)``; only the shapes and dtypes
  of ``example_inputs`` matter.
  """
  return jax.jit(functools.partial(model.init, train=False))(rng, example_inputs)


__all__ = [
    'DTYPES', 'ENCODERS', 'FUSED', 'FUSIONS', 'MODELS', 'OBJECT', 'LateFusionClassifier', 'MLPEncoder',
    'MMTMClassifier', 'ResNet18', 'ResNet18Frames', 'ResNet18Image', 'ResNet18Spectrogram', 'SmallCNN', 'StagedEncoder', 'build_encoder', 'build_encoders',
    'build_model', 'check_features_encoder', 'check_model', 'check_parameter_groups',
    'check_staged_encoder', 'config_with_objects', 'describe', 'encoder_args', 'encoder_config',
    'encoder_sections', 'init_variables', 'module_options', 'register_encoder', 'scale_gradient',
    'with_compute_dtype',
]
