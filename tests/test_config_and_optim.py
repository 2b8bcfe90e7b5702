"""Config arguments, config files, optimiser construction."""

import math

import jax.numpy as jnp
import optax
import pytest

from configs import cgmnist, synthetic, ucimf
from mmjax import config_lib, optim


def test_parse_arg_types_and_flags():
  args = config_lib.parse_arg('method=uniform,smoke,seed=3,lr=0.5', method='vanilla', smoke=False,
                              seed=0, lr=0.1)
  assert args.method == 'uniform' and args.smoke is True and args.seed == 3 and args.lr == 0.5


@pytest.mark.parametrize('arg, match', [
    ('nope=1', "'nope' is not known"),
    ('seed=abc', 'expected a int'),
    ('method', 'needs a value'),
    ('smoke=maybe', 'expected true or false'),
])
def test_parse_arg_errors(arg, match):
  with pytest.raises(ValueError, match=match):
    config_lib.parse_arg(arg, method='vanilla', smoke=False, seed=0)


@pytest.mark.parametrize('module', [cgmnist, ucimf, synthetic])
@pytest.mark.parametrize('method', ['vanilla', 'uniform', 'fixed'])
def test_config_files(module, method):
  config = module.get_config(f'method={method},smoke')
  assert config.method.name == method
  assert config.num_epochs <= 2
  if method == 'fixed':
    assert set(config.method.weights) == {'fused', *config.model.encoders}


def test_config_method_option_for_wrong_method():
  with pytest.raises(ValueError, match="modality='gray' does not apply to method 'vanilla'"):
    cgmnist.get_config('method=vanilla,modality=gray')


def test_config_unknown_method():
  with pytest.raises(ValueError, match=r"method.name = 'nope' is not a method; valid methods are"):
    cgmnist.get_config('method=nope')


def test_config_diff():
  assert config_lib.diff({'a': 1, 'b': {'c': 2}}, {'a': 1, 'b': {'c': 3}}) == ['b.c: 2 -> 3']


def _lr_after(tx, steps, value=1.0):
  params = {'w': jnp.ones(())}
  state = tx.init(params)
  updates = None
  for _ in range(steps):
    updates, state = tx.update({'w': jnp.ones(())}, state, params, value=value)
  return -float(updates['w'])


def test_sgd_constant_step_and_cosine_schedules():
  base = dict(optim.DEFAULTS, momentum=0.0, learning_rate=0.1)
  assert math.isclose(_lr_after(optim.build_optimizer(base, 10, 5), 1), 0.1, rel_tol=1e-6)
  step = optim.build_optimizer(dict(base, schedule='step', step_epochs=(1,), step_factor=0.5), 10, 5)
  assert math.isclose(_lr_after(step, 10), 0.1, rel_tol=1e-6)  # step index 9, before the boundary
  assert math.isclose(_lr_after(step, 11), 0.05, rel_tol=1e-6)
  cosine = optim.build_optimizer(dict(base, schedule='cosine'), 10, 2)
  assert math.isclose(_lr_after(cosine, 11), 0.05, rel_tol=1e-5)  # half-way: lr/2


def test_plateau_schedule_reduces_after_patience():
  cfg = dict(optim.DEFAULTS, momentum=0.0, learning_rate=0.1, schedule='plateau', plateau_patience=1,
             plateau_factor=0.5)
  tx = optim.build_optimizer(cfg, steps_per_epoch=2, num_epochs=10)
  # A constant loss never improves: after the first epoch sets the best value, one more epoch
  # without improvement exceeds patience 1 ... the scale drops by the factor.
  lrs = []
  params = {'w': jnp.ones(())}
  state = tx.init(params)
  for _ in range(8):
    updates, state = tx.update({'w': jnp.ones(())}, state, params, value=jnp.float32(1.0))
    lrs.append(-float(updates['w']))
  assert lrs[0] == pytest.approx(0.1)
  assert min(lrs) < 0.1 * 0.6


def test_adamw_and_weight_decay():
  cfg = dict(optim.DEFAULTS, name='adamw', weight_decay=0.1)
  assert isinstance(optim.build_optimizer(cfg, 10, 1), optax.GradientTransformationExtraArgs)
  sgd_wd = optim.build_optimizer(dict(optim.DEFAULTS, momentum=0.0, learning_rate=1.0,
                                      weight_decay=0.5), 10, 1)
  params = {'w': jnp.full((), 2.0)}
  updates, _ = sgd_wd.update({'w': jnp.zeros(())}, sgd_wd.init(params), params, value=0.0)
  assert float(updates['w']) == pytest.approx(-1.0)  # -lr * wd * w


@pytest.mark.parametrize('change, match', [
    ({'name': 'rmsprop'}, "optimizer.name = 'rmsprop'"),
    ({'schedule': 'linear'}, "optimizer.schedule = 'linear'"),
    ({'learning_rate': -1.0}, 'optimizer.learning_rate'),
    ({'weight_decay': -1.0}, 'optimizer.weight_decay'),
    ({'schedule': 'step'}, 'optimizer.step_epochs'),
    ({'bogus': 1}, 'optimizer.bogus is not an optimizer option'),
])
def test_optimizer_errors(change, match):
  with pytest.raises(ValueError, match=match):
    optim.build_optimizer(dict(optim.DEFAULTS, **change), 10, 2)
