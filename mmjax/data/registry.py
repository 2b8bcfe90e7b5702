"""The data-set registry: a name in ``config.data.name`` -> a builder of a data set.

A builder is a function ``build(seed, **options) -> MultiModalDataset`` registered with
:func:`register` under a name, with the options it takes and their defaults::

    @mmjax.data.register('my_data', options={'root': '/data/mine', 'val_fraction': 0.1})
    def build(seed, root, val_fraction):
      ...
      return mmjax.data.from_arrays({...}, name='my_data')

(without ``options=``, the builder's ``OPTIONS`` attribute, or none). ``get_dataset`` then builds
it from ``config.data = {'name': 'my_data', 'root': ...}``; an option left out takes its default.

A registration lives in the process that ran it, so every process that builds the data set must
run it again, a resumed run included. Either register in the config file itself (the config file
is imported for every run of ``python -m mmjax.main --config my_config.py``), or in a module of
your own package and name it in ``config.data.module = 'my_pkg.my_data'``: :func:`get_dataset`
imports that module by name before it looks the data set up.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

from mmjax.data.dataset import MultiModalDataset, check_int

MODULE_KEY = 'module'
"""The ``config.data`` key naming a module to import before the data set is looked up."""


@dataclasses.dataclass(frozen=True)
class DataSetBuilder:
  """A registered data set.

  Attributes:
    name: the name in ``config.data.name``.
    build: ``build(seed, **options) -> MultiModalDataset``.
    options: the options ``build`` takes and their defaults.
  """

  name: str
  build: Callable[..., MultiModalDataset]
  options: Mapping[str, Any]

  @property
  def description(self) -> str:
    """The first line of the builder's docstring ('' when it has none)."""
    return (self.build.__doc__ or '').strip().split('\n', 1)[0]


_REGISTRY: dict[str, DataSetBuilder] = {}


def _same_function(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
  """Whether ``a`` and ``b`` are one function defined twice (a config file imported again)."""
  key = lambda f: (getattr(f, '__module__', None), getattr(f, '__qualname__', None))
  return a is b or key(a) == key(b)


def register(name: str, *, options: Mapping[str, Any] | None = None
             ) -> Callable[[Callable[..., MultiModalDataset]], Callable[..., MultiModalDataset]]:
  """A decorator that registers ``build(seed, **options)`` as the data set ``name``.

  Args:
    name: the data set's name in ``config.data.name``: a Python identifier, not ``module``.
    options: the options ``build`` takes and their defaults; by default the builder's ``OPTIONS``
      attribute, or no options.

  Returns:
    The decorator; it returns the builder unchanged.

  Raises:
    ValueError: for a bad name, or a name already registered by a different builder (the same
      builder registered again, as when a config file is imported twice, replaces it).
  """
  if not isinstance(name, str) or not name.isidentifier() or name == MODULE_KEY:
    raise ValueError(f'data set name {name!r} must be a Python identifier other than '
                     f'{MODULE_KEY!r}.')

  def decorator(build: Callable[..., MultiModalDataset]) -> Callable[..., MultiModalDataset]:
    if not callable(build):
      raise ValueError(f'register({name!r}) decorates a builder function, got {build!r}.')
    declared = getattr(build, 'OPTIONS', {}) if options is None else options
    if not isinstance(declared, Mapping) or not all(isinstance(k, str) for k in declared):
      raise ValueError(f'register({name!r}): options must map option names to defaults, '
                       f'got {declared!r}.')
    if MODULE_KEY in declared or 'name' in declared:
      raise ValueError(f"register({name!r}): 'name' and {MODULE_KEY!r} are keys of config.data "
                       'itself, not options of a data set.')
    previous = _REGISTRY.get(name)
    if previous is not None and not _same_function(previous.build, build):
      raise ValueError(f'data set {name!r} is already registered by '
                       f'{previous.build.__module__}.{previous.build.__qualname__}; '
                       'choose another name.')
    _REGISTRY[name] = DataSetBuilder(name, build, dict(declared))
    return build

  return decorator


def registered() -> dict[str, DataSetBuilder]:
  """The registered data sets, ``{name: DataSetBuilder}``, in registration order (a copy)."""
  return dict(_REGISTRY)


def get_dataset(data_config: Any, seed: int) -> MultiModalDataset:
  """Builds the data set that ``data_config`` describes.

  Args:
    data_config: an ``ml_collections.ConfigDict`` (or a mapping) with ``name``, a registered data
      set (see :func:`registered`), optionally ``module``, a module imported by name first (where
      the data set registers), and any of the data set's options.
    seed: seeds the data set's splits and random construction, an integer >= 0.

  Returns:
    The data set. The bundled builders are cached: the same object for the same
    ``(data_config, seed)`` within a process.

  Raises:
    ValueError: for a module that cannot be imported, an unknown name, an unknown option or an
      invalid option value; the message names the offending key.
  """
  options = dict(data_config.to_dict() if hasattr(data_config, 'to_dict') else data_config)
  name = options.pop('name', None)
  module = options.pop(MODULE_KEY, None)
  if module is not None:
    if not isinstance(module, str) or not module:
      raise ValueError(f'data.{MODULE_KEY}={module!r} must name a module, e.g. '
                       "'my_package.my_data'.")
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ValueError(f'data.{MODULE_KEY}={module!r} cannot be imported: {e}.') from e
  if name not in _REGISTRY:
    raise ValueError(f'data.name={name!r} is not a data set; valid names are '
                     f'{list(_REGISTRY)}.')
  builder = _REGISTRY[name]
  unknown = sorted(set(options) - set(builder.options))
  if unknown:
    raise ValueError(f'Unknown option data.{unknown[0]} for data set {name!r}; valid options '
                     f'are name, {MODULE_KEY} and {list(builder.options)}.')
  resolved = {key: _hashable(key, options.get(key, default))
              for key, default in builder.options.items()}
  dataset = builder.build(check_int('seed', seed, 0), **resolved)
  if not isinstance(dataset, MultiModalDataset):
    raise ValueError(f'the builder of data set {name!r} returned a {type(dataset).__name__}, not '
                     'a MultiModalDataset (use mmjax.data.from_arrays or from_records).')
  return dataset


def _hashable(key: str, value: Any) -> Any:
  """``value`` with lists turned into tuples, so that builds can be cached on it."""
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(key, v) for v in value)
  if isinstance(value, Mapping):
    raise ValueError(f'data.{key} must be a scalar or a sequence, not a mapping: {value!r}.')
  return value
