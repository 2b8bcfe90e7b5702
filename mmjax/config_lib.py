"""Config helpers: big_vision-style ``get_config(arg)`` arguments and the common defaults.

A config file ``configs/NAME.py`` defines ``get_config(arg=None)``. ``arg`` is what follows
the colon in ``--config configs/NAME.py:ARG``: a comma-separated list of ``key=value`` and
bare flags (``method=gblend,estimator=online,smoke``). :func:`parse_arg` types each value
after its default and rejects unknown keys.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import ml_collections

from mmjax import methods, optim


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``'k1=v1,flag,k2=v2'``; types follow ``defaults``; a bare key sets ``True``."""
  values = dict(defaults)
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, raw = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'config argument {key!r} is not known; valid arguments are {sorted(defaults)}.')
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f'config argument {key!r} needs a value: {key}=VALUE.')
      values[key] = True
    elif isinstance(default, bool):
      if raw.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config argument {key}={raw!r}: expected true or false.')
      values[key] = raw.lower() in ('true', '1')
    elif isinstance(default, (int, float)):
      try:
        values[key] = type(default)(raw)
      except ValueError:
        raise ValueError(f'config argument {key}={raw!r}: expected a {type(default).__name__}.') from None
    else:
      values[key] = raw
  return ml_collections.ConfigDict(values)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment; a config file fills ``data`` and ``model``."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({
      'name': 'late_fusion', 'encoders': {}, 'fusion': 'concat', 'fused_hidden': (),
      'fused_dropout': 0.0})
  config.method = methods.method_config('vanilla')
  config.optimizer = ml_collections.ConfigDict(optim.DEFAULTS)
  config.batch_size = 64
  config.eval_batch_size = 256
  config.num_epochs = 20
  config.log_every_steps = 50  # how often the progress bar shows the running train metrics
  config.checkpoint_keep = 2  # latest checkpoints kept (the best-val one is kept apart)
  config.checkpoint_every_steps = 0  # also checkpoint every N steps inside epochs; 0: epoch ends only
  config.distributed = False  # call jax.distributed.initialize() (several hosts)
  config.progress_bar = True
  return config


def to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """A JSON-able plain dict (tuples become lists) of a config."""
  plain = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return json.loads(json.dumps(plain, sort_keys=True))


def diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = '') -> list[str]:
  """Dotted keys whose values differ between two plain config dicts."""
  keys = sorted(set(old) | set(new))
  out = []
  for key in keys:
    a, b = old.get(key, '<missing>'), new.get(key, '<missing>')
    if isinstance(a, dict) and isinstance(b, dict):
      out += diff(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append(f'{prefix}{key}: {a!r} -> {b!r}')
  return out


#: Config-file arguments that set a method option when given (``estimator=online``).
METHOD_ARGS: dict[str, Any] = {'modality': '', 'estimator': '', 'mode': ''}


def common_args(**defaults: Any) -> dict[str, Any]:
  """The arguments every config file takes, plus its own ``defaults``."""
  return {'method': 'vanilla', 'smoke': False, 'seed': 0, **METHOD_ARGS, **defaults}


def set_method(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """Sets ``config.method`` for ``args.method`` with the method options given in ``args``.

  The ``fixed`` method gets weight 1 for every head, to override with
  ``--config.method.weights.<head>=w``. The method's :meth:`Method.adjust_config` then adapts
  the rest of the experiment (for example the model a method needs).
  """
  cls = methods.get_method_class(args.method)
  overrides = {}
  for key in METHOD_ARGS:
    if args[key] == '':
      continue
    if key not in cls.DEFAULTS:
      raise ValueError(f'config argument {key}={args[key]!r} does not apply to method '
                       f'{args.method!r}; its options are {sorted(cls.DEFAULTS)}.')
    overrides[key] = args[key]
  if args.method == 'fixed':
    overrides['weights'] = {h: 1.0 for h in ('fused', *config.model.encoders)}
  config.method = methods.method_config(args.method, **overrides)
  cls.adjust_config(config)
