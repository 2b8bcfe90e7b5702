"""Optimisers and learning-rate schedules from optax, built from ``config.optimizer``."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import optax

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step', 'plateau')

DEFAULTS: dict[str, Any] = {
    'name': 'sgd',
    'learning_rate': 0.01,
    'momentum': 0.9,  # sgd
    'nesterov': False,  # sgd
    'b1': 0.9,  # adam, adamw
    'b2': 0.999,  # adam, adamw
    'weight_decay': 0.0,  # L2 added to the gradient for sgd/adam, decoupled for adamw
    'schedule': 'constant',
    'warmup_epochs': 0,  # linear warm-up before cosine
    'step_epochs': (),  # step: epochs at which the learning rate is multiplied by step_factor
    'step_factor': 0.1,
    'plateau_factor': 0.3,  # plateau: multiply by this when the epoch train loss stalls
    'plateau_patience': 10,  # epochs
    'plateau_rtol': 1e-3,
    'plateau_min_scale': 1e-5,
}


def _schedule(cfg: Mapping[str, Any], steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
  lr = float(cfg['learning_rate'])
  name = cfg['schedule']
  if name in ('constant', 'plateau'):
    return optax.constant_schedule(lr)
  if name == 'cosine':
    total = max(1, steps_per_epoch * num_epochs)
    warmup = int(cfg['warmup_epochs']) * steps_per_epoch
    if warmup >= total:
      raise ValueError(f"optimizer.warmup_epochs = {cfg['warmup_epochs']} must be below num_epochs = {num_epochs}.")
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total) if warmup else \
        optax.cosine_decay_schedule(lr, total)
  if name == 'step':
    epochs = [int(e) for e in cfg['step_epochs']]
    if not epochs or any(e <= 0 for e in epochs):
      raise ValueError(f"optimizer.step_epochs = {tuple(cfg['step_epochs'])}: the 'step' schedule needs "
                       'positive epochs at which to decay, e.g. (10, 20).')
    factor = float(cfg['step_factor'])
    return optax.piecewise_constant_schedule(lr, {e * steps_per_epoch: factor for e in epochs})
  raise ValueError(f'optimizer.schedule = {name!r}; valid schedules are {list(SCHEDULES)}.')


def learning_rate_schedule(cfg: Mapping[str, Any], steps_per_epoch: int, num_epochs: int
                           ) -> optax.Schedule:
  """The learning rate by update count of ``config.optimizer`` (before a plateau's scale)."""
  return _schedule({**DEFAULTS, **dict(cfg)}, steps_per_epoch, num_epochs)


def learning_rate(schedule: optax.Schedule, opt_state: Any, update: int) -> float:
  """The learning rate applied by update number ``update`` (counting from 0).

  ``schedule(update)`` times the reduce-on-plateau scale held in ``opt_state``, when the
  optimiser has one: optax applies the scale of the state an update produces, so the scale in
  the state after update ``update`` is the one that update used.
  """
  is_plateau = lambda x: isinstance(x, optax.contrib.ReduceLROnPlateauState)  # noqa: E731
  scales = [float(s.scale) for s in jax.tree.leaves(opt_state, is_leaf=is_plateau) if is_plateau(s)]
  return float(schedule(update)) * (scales[0] if scales else 1.0)


def build_optimizer(cfg: Mapping[str, Any], steps_per_epoch: int, num_epochs: int
                    ) -> optax.GradientTransformationExtraArgs:
  """The optax transformation of ``config.optimizer``.

  Its ``update`` takes ``value=`` (the step's training objective), which only the
  reduce-on-plateau schedule reads: it averages the objective over each epoch and scales the
  updates by ``plateau_factor`` after ``plateau_patience`` epochs without relative improvement
  ``plateau_rtol``, as PyTorch's ``ReduceLROnPlateau`` on the train loss in Wu et al.'s code.
  """
  unknown = sorted(set(cfg) - set(DEFAULTS))
  if unknown:
    raise ValueError(f'optimizer.{unknown[0]} is not an optimizer option; valid options are {sorted(DEFAULTS)}.')
  cfg = {**DEFAULTS, **dict(cfg)}
  name = cfg['name']
  if name not in OPTIMIZERS:
    raise ValueError(f'optimizer.name = {name!r}; valid optimizers are {list(OPTIMIZERS)}.')
  if not float(cfg['learning_rate']) > 0:
    raise ValueError(f"optimizer.learning_rate = {cfg['learning_rate']!r} must be positive.")
  weight_decay = float(cfg['weight_decay'])
  if weight_decay < 0:
    raise ValueError(f'optimizer.weight_decay = {weight_decay!r} must be non-negative.')
  lr = _schedule(cfg, steps_per_epoch, num_epochs)
  if name == 'adamw':
    tx = optax.adamw(lr, b1=cfg['b1'], b2=cfg['b2'], weight_decay=weight_decay)
  else:
    base = (optax.sgd(lr, momentum=cfg['momentum'] or None, nesterov=cfg['nesterov'])
            if name == 'sgd' else optax.adam(lr, b1=cfg['b1'], b2=cfg['b2']))
    tx = optax.chain(optax.add_decayed_weights(weight_decay), base) if weight_decay else base
  if cfg['schedule'] == 'plateau':
    tx = optax.chain(tx, optax.contrib.reduce_on_plateau(
        factor=cfg['plateau_factor'], patience=cfg['plateau_patience'], rtol=cfg['plateau_rtol'],
        accumulation_size=steps_per_epoch, min_scale=cfg['plateau_min_scale']))
  return optax.with_extra_args_support(tx)
