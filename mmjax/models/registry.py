"""Encoders by name and by object: the registry, the contracts the models need, and how a run
records an encoder (or a whole model) passed from Python in its ``config.json``.

- :func:`register_encoder` adds a ``flax.linen`` module class to :data:`ENCODERS` under a name,
  so that ``model.encoders.<m> = {'name': NAME, **options}`` builds it; its dataclass fields are
  its options, and each needs a JSON default (number, string, bool, None or a list of them).
- :func:`encoder_config` is a full config section for a name (every option at its default), and
  :func:`encoder_args` / :func:`encoder_sections` give config files the arguments
  ``encoder=NAME`` and ``encoder_<modality>=NAME`` that switch an encoder's type with the new
  type's defaults.
- :func:`describe` turns a module object into the config section that stands for it:
  ``{'name': NAME, **fields}`` for a registered class, else
  ``{'name': '<object>', 'class': 'package.module.Class', **fields}``. The run's ``config.json``
  then says what was trained, and a resume with a different object differs from it.
- :func:`check_features_encoder` and :func:`check_staged_encoder` check, when a model is built,
  the interface that late fusion and MMTM need from an encoder (``docs/your_model.md``).
- An encoder's ``dtype`` field (:data:`MODEL_SET_OPTIONS`), where its class declares one, is set
  by the model from ``model.dtype``; it is not an option of the encoder's config section.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Sequence, TypeVar

import flax.linen as nn
import numpy as np

from mmjax.models.encoders import ENCODERS

#: The encoder names mmjax ships with; a user's class cannot take them.
BUILTIN_ENCODERS = ('cnn', 'mlp', 'resnet18', 'resnet18_frames', 'resnet18_image',
                    'resnet18_spectrogram')
#: ``name`` of the config section that stands for a module passed as an object from Python.
OBJECT = '<object>'
#: What a staged encoder (one that MMTM can sit between the stages of) provides.
STAGED_INTERFACE = ('stage_channels', 'stages', 'embed')
#: Encoder fields the model sets (from ``model.dtype``), not the encoder's config section.
MODEL_SET_OPTIONS = ('dtype',)

ModuleClass = TypeVar('ModuleClass', bound=type)

def module_options(cls: type[nn.Module]) -> tuple[str, ...]:
  """The constructor arguments of module class ``cls`` (Flax's ``parent``/``name`` left out)."""
  return tuple(f.name for f in dataclasses.fields(cls)
               if f.init and f.name not in ('parent', 'name'))


def encoder_options(cls: type[nn.Module]) -> tuple[str, ...]:
  """The options of encoder class ``cls`` in a config section: its constructor arguments less
  those the model sets (:data:`MODEL_SET_OPTIONS`)."""
  return tuple(k for k in module_options(cls) if k not in MODEL_SET_OPTIONS)


def class_path(cls: type) -> str:
  """``'package.module.Class'``: where a class is defined."""
  return f'{cls.__module__}.{cls.__qualname__}'


def _is_json_value(value: Any) -> bool:
  if value is None or isinstance(value, (bool, int, float, str)):
    return True
  if isinstance(value, (list, tuple)):
    return all(_is_json_value(v) for v in value)
  return False


def _defaults(cls: type[nn.Module]) -> dict[str, Any]:
  """Option -> default of a module class; options without a JSON default are an error."""
  defaults = {}
  for field in dataclasses.fields(cls):
    if not field.init or field.name in ('parent', 'name', *MODEL_SET_OPTIONS):
      continue
    if field.default is not dataclasses.MISSING:
      default = field.default
    elif field.default_factory is not dataclasses.MISSING:
      default = field.default_factory()
    else:
      raise TypeError(f'register_encoder: option {field.name!r} of {class_path(cls)} has no '
                      'default; every option of a registered encoder needs one, so that a config '
                      'can name the encoder alone.')
    if not _is_json_value(default):
      raise TypeError(f'register_encoder: option {field.name!r} of {class_path(cls)} defaults to '
                      f'{default!r}; a registered encoder\'s options are numbers, strings, bools, '
                      'None or lists of them, so that config.json can hold them.')
    defaults[field.name] = default
  return defaults


def register_encoder(name: str) -> Callable[[ModuleClass], ModuleClass]:
  """Class decorator: makes ``model.encoders.<m> = {'name': name, ...}`` build the class.

  ``name`` must not be a built-in encoder's (:data:`BUILTIN_ENCODERS`) nor another class's. The
  same class defined again (a config file loaded twice defines it anew) replaces itself.

  Example::

      @mmjax.models.register_encoder('tiny_mlp')
      class TinyMLP(nn.Module):
        features: int = 16

        @nn.compact
        def __call__(self, x, *, train):
          return nn.Dense(self.features)(x.reshape(x.shape[0], -1))
  """
  if not isinstance(name, str) or not name or name == OBJECT:
    raise ValueError(f'register_encoder: the name {name!r} must be a non-empty string other '
                     f'than {OBJECT!r}.')

  def register(cls: ModuleClass) -> ModuleClass:
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
      raise TypeError(f'register_encoder({name!r}) decorates {cls!r}, which is not a flax.linen '
                      'Module class.')
    _defaults(cls)
    taken = ENCODERS.get(name)
    if taken is not None and taken is not cls and (
        name in BUILTIN_ENCODERS or class_path(taken) != class_path(cls)):
      raise ValueError(f'register_encoder: the name {name!r} is taken by {class_path(taken)}; '
                       f'choose another name for {class_path(cls)}.')
    ENCODERS[name] = cls
    return cls

  return register


def _unknown_name(name: Any) -> str:
  return f'encoder name {name!r} is not an encoder; valid names are {sorted(ENCODERS)}.'


def encoder_config(name: str, **preset: Any) -> dict[str, Any]:
  """The config section of encoder ``name``: ``{'name': name, **every option}``, the options at
  their class defaults updated by ``preset``."""
  if name not in ENCODERS:
    raise ValueError(_unknown_name(name))
  section = {'name': name, **_defaults(ENCODERS[name])}
  for key, value in preset.items():
    if key not in section:
      raise ValueError(f'{key!r} is not an option of encoder {name!r}; its options are '
                       f'{list(encoder_options(ENCODERS[name]))}.')
    section[key] = value
  return section


def encoder_args(modalities: Sequence[str], default: str) -> dict[str, str]:
  """Config-file arguments ``encoder=NAME`` (every modality, default ``default``) and
  ``encoder_<m>=NAME`` (modality ``m`` alone; empty: as ``encoder``)."""
  return {'encoder': default, **{f'encoder_{m}': '' for m in modalities}}


def encoder_sections(args: Mapping[str, Any], modalities: Sequence[str],
                     presets: Mapping[str, Mapping[str, Any]] | None = None
                     ) -> dict[str, dict[str, Any]]:
  """``model.encoders`` from the arguments of :func:`encoder_args`: modality -> the section of
  its encoder (:func:`encoder_config`), with the config file's ``presets[name]`` for that name."""
  sections = {}
  for m in modalities:
    key = f'encoder_{m}' if args.get(f'encoder_{m}') else 'encoder'
    name = args[key]
    if name not in ENCODERS:
      raise ValueError(f'config argument {key}={name!r} is not an encoder; valid encoders are '
                       f'{sorted(ENCODERS)}.')
    sections[m] = encoder_config(name, **(presets or {}).get(name, {}))
  return sections


def build_encoder(cfg: Mapping[str, Any], modality: str = '<modality>') -> nn.Module:
  """The encoder ``ENCODERS[cfg['name']]`` built with the other keys of ``cfg`` as arguments.

  Lists in ``cfg`` (e.g. ``hidden`` given on the command line) become tuples. Keys that are not
  options of the named encoder (left from another type after ``name`` alone was overridden) are
  an error that says how to switch types: the config-file argument ``encoder_<modality>=NAME``.
  """
  cfg = dict(cfg)
  if 'name' not in cfg:
    raise ValueError(f"encoder config {cfg} has no 'name'; valid names are {sorted(ENCODERS)}.")
  name = cfg.pop('name')
  if name == OBJECT:
    raise ValueError(
        f"describes an encoder object of class {cfg.get('class', '?')} passed from Python, which "
        'a config cannot build; pass the object again (train_and_evaluate(config, workdir, '
        "encoders={...})) or register its class with @mmjax.models.register_encoder('NAME').")
  if name not in ENCODERS:
    raise ValueError(_unknown_name(name))
  cls = ENCODERS[name]
  options = encoder_options(cls)
  model_set = [key for key in cfg if key in MODEL_SET_OPTIONS]
  if model_set:
    raise ValueError(f'{model_set[0]!r} is set for the whole model, not per encoder: use '
                     f'model.{model_set[0]} (valid dtypes: float32, bfloat16).')
  unknown = [key for key in cfg if key not in options]
  if unknown:
    keys = ', '.join(repr(k) for k in sorted(unknown))
    raise ValueError(
        f"{keys} {'is not an option' if len(unknown) == 1 else 'are not options'} of encoder "
        f"{name!r}; its options are {list(options)}. To switch an encoder's type with the new "
        f"type's defaults, give the config file the argument encoder_{modality}={name} (or "
        f'encoder={name} for every modality), e.g. --config configs/NAME.py:encoder_{modality}='
        f'{name}, then override its options.')
  return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


def _describe_value(value: Any, depth: int = 0) -> Any:
  if depth > 8:
    return repr(value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, nn.Module):
    return describe(value)
  if isinstance(value, (list, tuple)):
    return [_describe_value(v, depth + 1) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _describe_value(v, depth + 1) for k, v in value.items()}
  if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
    return np.dtype(value).name
  if hasattr(value, 'tolist'):  # numpy and jax arrays, numpy scalars
    return value.tolist()
  if isinstance(value, functools.partial):
    return {'function': _describe_value(value.func, depth + 1),
            'args': _describe_value(value.args, depth + 1),
            'keywords': _describe_value(value.keywords, depth + 1)}
  if hasattr(value, '__qualname__') and hasattr(value, '__module__'):  # functions, classes
    path = f'{value.__module__}.{value.__qualname__}'
    closure = getattr(value, '__closure__', None)
    if '<locals>' in value.__qualname__ and closure:  # e.g. nn.initializers.variance_scaling(...)
      return {'function': path,
              'closure': [_describe_value(c.cell_contents, depth + 1) for c in closure]}
    return path
  return repr(value)


def describe(module: nn.Module) -> dict[str, Any]:
  """The config section that stands for ``module`` in a run's ``config.json``.

  ``{'name': NAME, **options}`` when its class is registered as ``NAME`` (the section then
  builds the same module), else ``{'name': '<object>', 'class': 'package.module.Class',
  **options}``. Options are the dataclass fields; submodules, functions and arrays among them
  are described too: a submodule as its own section, a function by its import path (with the
  values it closes over for a nested one, such as an initializer, and the arguments of a
  ``functools.partial``), an array as a list, a dtype by its name. A ``dtype`` left at ``None``
  (the model sets it, :data:`MODEL_SET_OPTIONS`) is left out. Any other value is recorded by
  its ``repr``.
  """
  cls = type(module)
  fields = {k: _describe_value(getattr(module, k)) for k in module_options(cls)
            if not (k in MODEL_SET_OPTIONS and getattr(module, k) is None)}
  names = [n for n, c in ENCODERS.items() if c is cls]
  if names:
    return {'name': names[0], **fields}
  return {'name': OBJECT, 'class': class_path(cls), **fields}


def _where(modality: str, encoder: Any) -> str:
  return f'model.encoders.{modality} ({class_path(type(encoder))})'


def check_features_encoder(modality: str, encoder: Any) -> None:
  """Late fusion's contract: a ``flax.linen`` module called as ``encoder(x, train=...)`` that
  returns ``[batch, features]`` (the shape is checked when the model first runs)."""
  if not isinstance(encoder, nn.Module):
    raise ValueError(f'model.encoders.{modality} is a {type(encoder).__name__}, not a flax.linen '
                     'Module; an encoder is a flax.linen Module (see docs/your_model.md).')
  parameters = inspect.signature(type(encoder).__call__).parameters
  if 'train' not in parameters and not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
    raise ValueError(f'{_where(modality, encoder)}: __call__ has no keyword argument train; an '
                     'encoder is called as encoder(x, train=True|False) (see docs/your_model.md).')


def check_staged_encoder(modality: str, encoder: Any) -> tuple[int, ...]:
  """MMTM's contract on top of late fusion's: ``stage_channels`` (channels out of each stage,
  known before the module is bound), ``stages`` (defined in ``setup``, one module per stage,
  each called as ``stage(x, train=...)``) and ``embed(x, *, train) -> [batch, features]``.

  Returns ``stage_channels``; raises a one-line error naming what is missing.
  """
  check_features_encoder(modality, encoder)
  missing = []
  try:
    channels = encoder.stage_channels
  except (AttributeError, NotImplementedError):
    missing.append('stage_channels')
  try:
    stages = encoder.clone(parent=None).bind({}).stages
  except (AttributeError, NotImplementedError):
    missing.append('stages')
  if not callable(getattr(type(encoder), 'embed', None)):
    missing.append('embed')
  if missing:
    raise ValueError(
        f'{_where(modality, encoder)} is not a staged encoder: it lacks {", ".join(missing)}. '
        'MMTM sits between stages and needs stage_channels (a tuple of channels per stage), '
        'stages (set in setup, each called as stage(x, train=...)) and embed(x, *, train) -> '
        '[batch, features]; subclass mmjax.models.StagedEncoder (see docs/your_model.md).')
  if (not isinstance(channels, (tuple, list)) or not channels
      or not all(isinstance(c, int) and c > 0 for c in channels)):
    raise ValueError(f'{_where(modality, encoder)}.stage_channels = {channels!r} must be a '
                     'non-empty tuple of positive ints, the channels out of each stage.')
  if len(stages) != len(channels):
    raise ValueError(f'{_where(modality, encoder)} has {len(stages)} stages but stage_channels '
                     f'{tuple(channels)} names {len(channels)}; give one channel count per stage.')
  return tuple(channels)
