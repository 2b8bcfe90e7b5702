"""Evaluations beyond loss and accuracy, listed in the config (as big_vision's ``config.evals``).

``config.evals`` maps an evaluator's name to its options (``{}`` for the defaults)::

    config.evals.utilization = {}   # greedy learning's conditional utilization rate

After the run's own loss and accuracy on ``val`` and ``test``, every listed evaluator adds its
metrics to that split's record in ``metrics.jsonl``. An evaluator gets the run's
:class:`~mmjax.context.RunContext`, the train state, the split and the loss/accuracy already
computed. Add one of your own with :func:`register`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import ml_collections

from mmjax.context import RunContext


class Evaluator:
  """An evaluation run at the end of every epoch on the ``val`` and ``test`` splits.

  Subclasses set ``name`` (the key in ``config.evals``), ``DEFAULTS`` (their options) and
  ``PLOTS`` (report plots of their metrics, names in :data:`mmjax.report.PLOT_FUNCTIONS`).
  """

  name: ClassVar[str] = ''
  DEFAULTS: ClassVar[dict[str, Any]] = {}
  PLOTS: ClassVar[tuple[str, ...]] = ()

  def __init__(self, options: Mapping[str, Any]):
    self.options = {**self.DEFAULTS, **options}

  def setup(self, ctx: RunContext) -> None:
    """Once per run, before training: checks the run fits and builds compiled functions."""
    del ctx

  def evaluate(self, ctx: RunContext, state: Any, split: str, evaluated: Mapping[str, float]
               ) -> dict[str, float]:
    """The metrics on ``split``; ``evaluated`` holds its ``loss/<head>`` and ``accuracy/<head>``."""
    raise NotImplementedError


EVALUATORS: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
  """Class decorator: makes evaluator ``cls`` available as ``config.evals.<cls.name>``."""
  if not (isinstance(cls, type) and issubclass(cls, Evaluator)) or not cls.name:
    raise ValueError(f'{cls!r} is not an Evaluator subclass with a name.')
  if EVALUATORS.get(cls.name, cls) is not cls:
    raise ValueError(f'evaluator name {cls.name!r} is taken by {EVALUATORS[cls.name].__qualname__}.')
  EVALUATORS[cls.name] = cls
  return cls


def get_evaluator_class(name: str) -> type[Evaluator]:
  if name not in EVALUATORS:
    raise ValueError(f'evals.{name} is not an evaluator; valid evaluators are {sorted(EVALUATORS)}.')
  return EVALUATORS[name]


def build_evaluators(evals: Mapping[str, Any]) -> list[Evaluator]:
  """The evaluators ``config.evals`` lists, in its order, each with its options checked."""
  out = []
  for name, options in evals.items():
    cls = get_evaluator_class(name)
    if not isinstance(options, (Mapping, ml_collections.ConfigDict)):
      raise ValueError(f'evals.{name} = {options!r} must be a section of options ({{}} for the '
                       'defaults).')
    unknown = sorted(set(options.keys()) - set(cls.DEFAULTS))
    if unknown:
      raise ValueError(f'evals.{name}.{unknown[0]} is not an option of evaluator {name!r}; its '
                       f'options are {sorted(cls.DEFAULTS)}.')
    out.append(cls(dict(options.items())))
  return out


# The bundled evaluators register themselves on import.
from mmjax.evaluators import utilization  # noqa: E402  pylint: disable=wrong-import-position

__all__ = ['EVALUATORS', 'Evaluator', 'build_evaluators', 'get_evaluator_class', 'register',
           'utilization']
