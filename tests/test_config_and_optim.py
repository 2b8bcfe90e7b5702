"""Config arguments, config files, optimiser construction."""

import math

import jax.numpy as jnp
import ml_collections
import optax
import pytest

from configs import cgmnist, synthetic, ucimf
from conftest import tiny_synthetic_config
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
  assert config_lib.diff({'a': 1}, {'a': 1, 'd': 4}) == ["d: '<missing>' -> 4"]


def _stored(**changes):
  """A synthetic config as config.json holds it, with top-level ``changes``."""
  config = config_lib.to_dict(synthetic.get_config('method=uniform'))
  config.update(changes)
  return config


def test_resumable_settings_are_accepted_and_listed():
  old = _stored()
  new = _stored(progress_bar=False, log_every_steps=7, checkpoint_keep=5, eval_batch_size=32,
                checkpoint_every_steps=100, num_epochs=25,
                distributed={**old['distributed'], 'enabled': True, 'process_id': 1})
  assert config_lib.resume_changes(old, new) == [
      'checkpoint_every_steps: 0 -> 100', 'checkpoint_keep: 2 -> 5',
      'distributed.enabled: False -> True', 'distributed.process_id: -1 -> 1',
      'eval_batch_size: 256 -> 32', 'log_every_steps: 10 -> 7', 'num_epochs: 20 -> 25',
      'progress_bar: True -> False']
  assert config_lib.resume_changes(old, dict(old)) == []


@pytest.mark.parametrize('changes, refused', [
    ({'seed': 1}, 'seed: 0 -> 1'),
    ({'batch_size': 32}, 'batch_size: 64 -> 32'),
    ({'num_epochs': 19}, 'num_epochs: 20 -> 19'),  # shrinking is run-defining
])
def test_run_defining_changes_are_refused(changes, refused):
  with pytest.raises(config_lib.UserError, match=f'Run-defining differences: {refused}.$'):
    config_lib.resume_changes(_stored(), _stored(**changes))


def test_num_epochs_grows_only_where_nothing_depends_on_it():
  def grown(optimizer=None, method=None):
    old = _stored()
    old['optimizer'].update(optimizer or {})
    old['method'].update(method or {})
    new = {**old, 'num_epochs': old['num_epochs'] + 5}
    try:
      return config_lib.resume_changes(old, new) == ['num_epochs: 20 -> 25']
    except config_lib.UserError:
      return False
  assert grown() and grown({'schedule': 'step'}) and grown({'schedule': 'plateau'})
  assert not grown({'schedule': 'cosine'})
  assert not grown(method={'name': 'gblend', 'estimator': 'online'})
  assert not grown(method={'name': 'gblend', 'estimator': 'offline'})
  assert grown(method={'name': 'gblend', 'estimator': 'gradient'})


@pytest.mark.parametrize('key, value, match', [
    ('batch_size', 0, 'batch_size = 0 is not valid: a positive integer'),
    ('num_epochs', 2.0, 'num_epochs = 2.0 is not valid: a positive integer'),
    ('checkpoint_keep', True, 'checkpoint_keep = True is not valid: a positive integer'),
    ('checkpoint_every_steps', -1, 'checkpoint_every_steps = -1 is not valid: an integer >= 0'),
    ('seed', -3, 'seed = -3 is not valid: an integer >= 0'),
    ('progress_bar', 1, 'progress_bar = 1 is not valid: True or False'),
    ('data', 3, 'data = 3 is not valid: a section'),
    ('distributed', 'yes', "distributed = 'yes' is not valid: a section with keys"),
    ('distributed', {'enabled': 1}, 'distributed.enabled = 1 is not valid: True or False'),
    ('distributed', {'coordinator_address': 'localhost'},
     "distributed.coordinator_address = 'localhost' is not valid: 'host:port' of process 0"),
    ('distributed', {'num_processes': -2}, 'distributed.num_processes = -2 is not valid'),
    ('distributed', {'num_processes': 2, 'process_id': 2},
     r'distributed.process_id = 2 is not valid: this process.s index in \[0, num_processes = 2\)'),
    ('distributed', {'port': 1}, 'config.distributed.port is not a config key; valid keys are'),
])
def test_validate_names_the_bad_top_level_value(key, value, match):
  # A config built in Python without type safety can hold any value.
  config = ml_collections.ConfigDict(synthetic.get_config('smoke').to_dict(), type_safe=False)
  config_lib.validate(config)
  config[key] = value
  with pytest.raises(config_lib.UserError, match=match):
    config_lib.validate(config)


def test_distributed_as_true_or_false_still_means_enabled():
  config = ml_collections.ConfigDict(synthetic.get_config('smoke').to_dict(), type_safe=False)
  assert config_lib.distributed_options(config) == {
      'enabled': False, 'coordinator_address': '', 'num_processes': 0, 'process_id': -1}
  config.distributed = True  # the key's old form
  config_lib.validate(config)
  assert config_lib.distributed_options(config) == {
      'enabled': True, 'coordinator_address': '', 'num_processes': 0, 'process_id': -1}
  old = _stored(distributed=False)  # an older run's config.json
  assert config_lib.resume_changes(old, _stored()) == [
      "distributed: False -> {'coordinator_address': '', 'enabled': False, 'num_processes': 0, "
      "'process_id': -1}"]


def test_validate_names_an_unknown_top_level_key():
  config = synthetic.get_config('smoke')
  with config.unlocked():
    config.epochs = 3
  with pytest.raises(config_lib.UserError, match=r"config.epochs is not a config key; valid keys are \['batch_size'"):
    config_lib.validate(config)


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


def test_a_run_from_before_config_evals_resumes_with_no_evaluators():
  old = config_lib.to_dict(tiny_synthetic_config())
  del old['evals']  # config.json of a run started before the key existed
  assert config_lib.resume_changes(old, config_lib.to_dict(tiny_synthetic_config())) == []
  with_evaluator = tiny_synthetic_config()
  with_evaluator.evals = {'utilization': {}}
  with pytest.raises(config_lib.UserError, match=r'evals\.utilization'):
    config_lib.resume_changes(old, config_lib.to_dict(with_evaluator))
