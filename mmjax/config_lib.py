"""Config helpers: big_vision-style ``get_config(arg)`` arguments and the common defaults.

A config file ``configs/NAME.py`` defines ``get_config(arg=None)``. ``arg`` is what follows
the colon in ``--config configs/NAME.py:ARG``: a comma-separated list of ``key=value`` and
bare flags (``method=gblend,estimator=online,smoke``). :func:`parse_arg` types each value
after its default and rejects unknown keys.
"""

from __future__ import annotations

import json
import numbers
import re
from typing import Any, Mapping

import ml_collections

from mmjax import methods, optim
from mmjax.errors import UserError


def _typed(key: str, raw: str | None, default: Any) -> Any:
  """The value of config argument ``key`` given as ``raw`` (None: a bare flag), typed after ``default``."""
  if raw is None:
    if not isinstance(default, bool):
      raise ValueError(f'config argument {key!r} needs a value: {key}=VALUE.')
    return True
  if isinstance(default, bool):
    if raw.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'config argument {key}={raw!r}: expected true or false.')
    return raw.lower() in ('true', '1')
  if isinstance(default, (int, float)):
    try:
      return type(default)(raw)
    except ValueError:
      raise ValueError(f'config argument {key}={raw!r}: expected a {type(default).__name__}.') from None
  return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,flag,k2=v2'``; types follow ``defaults``; a bare key sets ``True``.

  When ``defaults`` has a ``method`` key, the scalar options of the method that ``arg`` (or the
  default) names are arguments too (:func:`mmjax.methods.scalar_options`), typed after the
  method's ``DEFAULTS``; those given are returned in ``method_options``, for
  :func:`set_method`.
  """
  given = {}
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, raw = item.partition('=')
    given[key.strip()] = raw if sep else None
  options = {}
  if 'method' in defaults:
    name = given.get('method') or defaults['method']
    options = {k: v for k, v in methods.scalar_options(name).items() if k not in defaults}
  values = dict(defaults)
  method_options = {}
  for key, raw in given.items():
    if key in defaults:
      values[key] = _typed(key, raw, defaults[key])
    elif key in options:
      method_options[key] = _typed(key, raw, options[key])
    elif 'method' in defaults and any(key in cls.DEFAULTS for cls in methods.METHODS.values()):
      raise ValueError(f'config argument {key}={raw!r} does not apply to method {name!r}; its '
                       f'options are {sorted(options)}.')
    else:
      raise ValueError(f'config argument {key!r} is not known; valid arguments are '
                       f'{sorted({**defaults, **options})}.')
  if 'method' in defaults:
    values['method_options'] = method_options
  return ml_collections.ConfigDict(values)


#: ``config.distributed``: ``enabled`` calls ``jax.distributed.initialize`` (several hosts) with
#: ``coordinator_address`` (``'host:port'`` of process 0), ``num_processes`` and ``process_id``;
#: each left at its default (``''``, ``0``, ``-1``) is detected from the cluster's environment
#: (SLURM, Open MPI, a Cloud TPU pod slice). See ``docs/distributed.md``.
DISTRIBUTED_DEFAULTS = {'enabled': False, 'coordinator_address': '', 'num_processes': 0,
                        'process_id': -1}


def distributed_options(config: Mapping[str, Any]) -> dict[str, Any]:
  """``config.distributed`` as a dict of :data:`DISTRIBUTED_DEFAULTS`' keys.

  A ``True`` or ``False`` (the key's old form, e.g. in an older run's ``config.json``) means
  ``enabled`` with everything detected from the environment.
  """
  value = config['distributed']
  if isinstance(value, bool):
    return {**DISTRIBUTED_DEFAULTS, 'enabled': value}
  return {**DISTRIBUTED_DEFAULTS, **dict(value)}


def _validate_distributed(value: Any) -> None:
  if isinstance(value, bool):
    return
  _check('distributed', value, isinstance(value, (ml_collections.ConfigDict, Mapping)),
         f'a section with keys {sorted(DISTRIBUTED_DEFAULTS)} (or True / False)')
  unknown = sorted(set(value.keys()) - set(DISTRIBUTED_DEFAULTS))
  if unknown:
    raise UserError(f'config.distributed.{unknown[0]} is not a config key; valid keys are '
                    f'{sorted(DISTRIBUTED_DEFAULTS)}.')
  options = {**DISTRIBUTED_DEFAULTS, **dict(value)}
  _check('distributed.enabled', options['enabled'], isinstance(options['enabled'], bool),
         'True or False')
  address = options['coordinator_address']
  _check('distributed.coordinator_address', address,
         isinstance(address, str) and (not address or re.fullmatch(r'[^\s:]+:\d+', address)),
         "'host:port' of process 0, or '' (detected from the environment)")
  count = options['num_processes']
  _check('distributed.num_processes', count, _is_int(count) and count >= 0,
         'the number of processes (>= 1), or 0 (detected from the environment)')
  index = options['process_id']
  _check('distributed.process_id', index,
         _is_int(index) and index >= -1 and (count == 0 or index < count),
         f'this process\'s index in [0, num_processes{f" = {count}" if count else ""}), '
         'or -1 (detected from the environment)')


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment; a config file fills ``data`` and ``model``."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({
      'name': 'late_fusion', 'encoders': {}, 'fusion': 'concat', 'fused_hidden': (),
      'fused_dropout': 0.0, 'dtype': 'float32'})
  config.method = methods.method_config('vanilla')
  config.evals = ml_collections.ConfigDict()  # evaluator name -> its options (mmjax.evaluators)
  config.optimizer = ml_collections.ConfigDict(optim.DEFAULTS)
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 20
  config.log_every_steps = 50  # how often the progress bar shows the running train metrics
  config.checkpoint_keep = 2  # latest checkpoints kept (the best-val one is kept apart)
  config.checkpoint_every_steps = 0  # also checkpoint every N steps within an epoch; 0: epoch ends only
  config.distributed = ml_collections.ConfigDict(DISTRIBUTED_DEFAULTS)  # several hosts
  config.progress_bar = True
  return config


def to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """A JSON-able plain dict (tuples become lists) of a config."""
  plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return json.loads(json.dumps(plain, sort_keys=True))


def to_json(config: ml_collections.ConfigDict | Mapping[str, Any]) -> str:
  """The text of a run's ``config.json``: :func:`to_dict` of ``config``, indented, keys sorted."""
  return json.dumps(to_dict(config), indent=2, sort_keys=True)


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ''
                 ) -> list[tuple[str, Any, Any]]:
  """``(dotted key, old value, new value)`` for every leaf that differs (``'<missing>'`` if absent)."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, '<missing>'), new.get(key, '<missing>')
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differences(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append((f'{prefix}{key}', a, b))
  return out


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two plain config dicts, as ``'key: old -> new'``."""
  return [f'{key}: {a!r} -> {b!r}' for key, a, b in _differences(old, new)]


#: Top-level keys that may differ when a run resumes: they change how a run is shown, logged,
#: checkpointed, evaluated in batches or started, not what it computes. Every other key
#: (``seed``, ``data``, ``model``, ``method``, ``optimizer``, ``batch_size``, ``num_epochs``) is
#: run-defining; ``num_epochs`` may still grow where :func:`num_epochs_can_grow` allows it.
#: A section's keys (``distributed.process_id``) are resumable where the section is.
RESUMABLE_KEYS = ('progress_bar', 'log_every_steps', 'checkpoint_keep', 'checkpoint_every_steps',
                  'eval_batch_size', 'distributed')

#: Learning-rate schedules that do not depend on ``num_epochs``.
EPOCH_FREE_SCHEDULES = ('constant', 'step', 'plateau')


def num_epochs_can_grow(config: Mapping[str, Any]) -> bool:
  """Whether a resumed run may train for more epochs than it was started with.

  True when nothing computed so far depends on ``num_epochs``: a learning-rate schedule in
  :data:`EPOCH_FREE_SCHEDULES` and a method that does not read it
  (:meth:`~mmjax.methods.base.HostHooks.reads_num_epochs`). The resumed run then equals one
  started with the larger ``num_epochs``.
  """
  method = config['method']
  if (method['name'] in methods.METHODS
      and methods.get_method_class(method['name']).reads_num_epochs(method)):
    return False
  return config['optimizer'].get('schedule', 'constant') in EPOCH_FREE_SCHEDULES


#: Keys added to the config after runs were started, with the value a ``config.json`` that lacks
#: them meant: such a run resumes with the key at that value.
ADDED_KEYS = {('model', 'dtype'): 'float32', ('evals',): {}}


def _with_added_keys(old: Mapping[str, Any]) -> dict[str, Any]:
  """``old`` with every key of :data:`ADDED_KEYS` it lacks set to the value it meant."""
  old = json.loads(json.dumps(old))
  for path, value in ADDED_KEYS.items():
    parent = old
    for section in path[:-1]:
      parent = parent.get(section) if isinstance(parent, dict) else None
    if isinstance(parent, dict) and path[-1] not in parent:
      parent[path[-1]] = json.loads(json.dumps(value))
  return old


def resume_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """The accepted differences when ``new`` resumes a run started with ``old`` (plain dicts).

  Keys of :data:`RESUMABLE_KEYS` may differ, and ``num_epochs`` may grow where
  :func:`num_epochs_can_grow`; any other difference raises a :class:`UserError` listing them all.
  A key of :data:`ADDED_KEYS` missing from ``old`` stands at the value it had before it existed.
  """
  old = _with_added_keys(old)
  accepted, refused = [], []
  for key, a, b in _differences(old, new):
    grows = (key == 'num_epochs' and isinstance(a, int) and isinstance(b, int) and b > a
             and num_epochs_can_grow(new))
    resumable = key.split('.')[0] in RESUMABLE_KEYS
    (accepted if resumable or grows else refused).append(f'{key}: {a!r} -> {b!r}')
  if refused:
    raise UserError(
        'the workdir holds a run with a different config; rerun with the same config to resume, '
        'or choose a new --workdir. Run-defining differences: ' + '; '.join(refused) + '.')
  return accepted


def _check(key: str, value: Any, ok: bool, valid: str) -> None:
  if not ok:
    raise UserError(f'{key} = {value!r} is not valid: {valid}.')


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the top-level keys of a config (sections are checked by what they build).

  Raises a :class:`UserError` naming the first unknown key or bad value.
  """
  known = base_config()
  unknown = sorted(set(config.keys()) - set(known.keys()))
  if unknown:
    raise UserError(f'config.{unknown[0]} is not a config key; valid keys are {sorted(known.keys())}.')
  missing = sorted(set(known.keys()) - set(config.keys()))
  if missing:
    raise UserError(f'config.{missing[0]} is missing; start from config_lib.base_config().')
  for key in ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps', 'checkpoint_keep'):
    _check(key, config[key], _is_int(config[key]) and config[key] > 0, 'a positive integer')
  for key in ('seed', 'checkpoint_every_steps'):
    _check(key, config[key], _is_int(config[key]) and config[key] >= 0, 'an integer >= 0')
  _check('progress_bar', config.progress_bar, isinstance(config.progress_bar, bool),
         'True or False')
  _validate_distributed(config['distributed'])
  for key in ('data', 'model', 'method', 'optimizer', 'evals'):
    _check(key, config[key], isinstance(config[key], (ml_collections.ConfigDict, Mapping)),
           'a section of key: value options')


def common_args(**defaults: Any) -> dict[str, Any]:
  """The arguments every config file takes, plus its own ``defaults``; the options of the
  chosen method are arguments too (:func:`parse_arg`)."""
  return {'method': 'vanilla', 'smoke': False, 'seed': 0, **defaults}


def set_method(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """Sets ``config.method`` for ``args.method`` with the method options given in ``args``.

  The method's :meth:`~mmjax.methods.base.HostHooks.adjust_config` then adapts the rest of the
  experiment (for example the model or the evaluators it needs, or ``fixed``'s default weights).
  """
  cls = methods.get_method_class(args.method)
  overrides = dict(args.get('method_options') or {})
  config.method = methods.method_config(args.method, **overrides)
  cls.adjust_config(config)
