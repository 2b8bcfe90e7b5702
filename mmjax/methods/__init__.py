"""Balancing methods: a registry from config names to :class:`~mmjax.methods.base.Method`.

The same methods as pure functions for a train step of your own: :mod:`mmjax.methods.gblend_fn`
(Gradient Blending) and :mod:`mmjax.methods.greedy_fn` (balanced multi-modal learning). Add a
method of your own with :func:`register` (a config file that imports its module can then name it
in ``method=NAME``); its ``DEFAULTS`` are its config options.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import ml_collections

from mmjax.methods import gblend_fn, greedy_fn
from mmjax.methods.base import HostHooks, Method, StepInfo, StepPieces
from mmjax.methods.gblend import GradientBlending
from mmjax.methods.greedy import BalancedMultimodalLearning
from mmjax.methods.weighted import Fixed, Uniform, Unimodal, Vanilla

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Vanilla, Uniform, Fixed, Unimodal, GradientBlending,
                              BalancedMultimodalLearning)
}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: makes method ``cls`` available as ``method.name = cls.name``."""
  if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
    raise ValueError(f'{cls!r} is not a Method subclass with a name.')
  if METHODS.get(cls.name, cls) is not cls:
    raise ValueError(f'method name {cls.name!r} is taken by {METHODS[cls.name].__qualname__}.')
  METHODS[cls.name] = cls
  return cls


def scalar_options(name: str) -> dict[str, Any]:
  """The options of method ``name`` that a config-file argument can set: those whose default
  is a bool, int, float or str."""
  return {k: v for k, v in get_method_class(name).DEFAULTS.items()
          if isinstance(v, (bool, int, float, str))}


def get_method_class(name: str) -> type[Method]:
  if name not in METHODS:
    raise ValueError(f'method.name = {name!r} is not a method; valid methods are {sorted(METHODS)}.')
  return METHODS[name]


def method_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """The config section of method ``name`` with its defaults, then ``overrides``."""
  cls = get_method_class(name)
  config = ml_collections.ConfigDict({'name': name, **cls.DEFAULTS})
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(
          f'method.{key} is not an option of method {name!r}; its options are {sorted(cls.DEFAULTS)}.')
    config[key] = value
  return config


def build_method(config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]) -> Method:
  """Builds the method named by ``config.name`` for a model with ``heads``."""
  cls = get_method_class(config['name'])
  unknown = sorted(set(config) - set(cls.DEFAULTS) - {'name'})
  if unknown:
    raise ValueError(
        f'method.{unknown[0]} is not an option of method {cls.name!r}; its options are '
        f'{sorted(cls.DEFAULTS)}.')
  return cls(config, heads, modalities)


# Methods that register themselves (after ``register`` exists).
from mmjax.methods import ogm_ge  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods import agm  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods import inforeg  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods import mla, mmpareto  # noqa: E402  pylint: disable=wrong-import-position
from mmjax.methods import pmr  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ['METHODS', 'HostHooks', 'Method', 'StepInfo', 'StepPieces', 'agm', 'build_method',
           'gblend_fn', 'get_method_class', 'greedy_fn', 'inforeg', 'method_config', 'mla',
           'mmpareto', 'ogm_ge', 'pmr', 'register',
           'scalar_options']
