"""Greedy learning (Wu et al. 2022): learning speeds, utilisation rates, guided re-balancing."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, tiny_synthetic_config
from mmjax import metrics, train
from mmjax.methods import greedy
from mmjax.methods.base import StepInfo

MODALITIES = ('a', 'b')


def test_learning_speed_ratios_hand_computed():
  params = {'encoders_a': {'w': jnp.array([3.0, 4.0])}, 'head_a': {'w': jnp.array([0.0])},
            'encoders_b': {'w': jnp.array([1.0])}, 'head_b': {'w': jnp.array([1.0])},
            'mmtm_0': {'squeeze': {'w': jnp.array([2.0])}, 'excite_a': {'w': jnp.array([1.0])},
                       'excite_b': {'w': jnp.array([2.0, 2.0])}}}
  grads = {'encoders_a': {'w': jnp.array([0.3, 0.4])}, 'head_a': {'w': jnp.array([1.0])},
           'encoders_b': {'w': jnp.array([0.1])}, 'head_b': {'w': jnp.array([0.0])},
           'mmtm_0': {'squeeze': {'w': jnp.array([1.0])}, 'excite_a': {'w': jnp.array([2.0])},
                      'excite_b': {'w': jnp.array([0.0, 3.0])}}}
  labels = {'encoders_a': {'w': 'branch/a'}, 'head_a': {'w': 'head/a'}, 'encoders_b': {'w': 'branch/b'},
            'head_b': {'w': 'head/b'},
            'mmtm_0': {'squeeze': {'w': 'fusion'}, 'excite_a': {'w': 'fusion/a'},
                       'excite_b': {'w': 'fusion/b'}}}
  own, fusion = greedy.learning_speed_ratios(params, grads, MODALITIES, labels)
  assert float(own['a']) == pytest.approx((0.09 + 0.16 + 1.0) / 25.0)
  assert float(own['b']) == pytest.approx(0.01 / 2.0)
  assert float(fusion['a']) == pytest.approx((1.0 + 4.0) / (4.0 + 1.0))  # squeeze + excite_a
  assert float(fusion['b']) == pytest.approx((1.0 + 9.0) / (4.0 + 8.0))  # squeeze + excite_b
  speed = greedy.conditional_learning_speed({'a': jnp.float32(0.02), 'b': jnp.float32(5.0)},
                                            {'a': jnp.float32(2.0), 'b': jnp.float32(0.5)})
  assert float(speed['a']) == pytest.approx(2.0) and float(speed['b']) == pytest.approx(-1.0)


def test_group_squared_norms_one_reduction_by_hand():
  from mmjax.methods import greedy_fn  # pylint: disable=import-outside-toplevel
  params = {'x': jnp.array([3.0, 4.0]), 'y': jnp.array([[1.0, 2.0]]), 'z': jnp.array([5.0]),
            'w': jnp.array([7.0])}
  grads = jax.tree.map(lambda p: p / 10, params)
  labels = {'x': 'branch/a', 'y': 'branch/a', 'z': 'fusion', 'w': 'head/fused'}
  norms = greedy_fn.group_squared_norms((params, grads), labels, ('fusion', 'branch/a', 'head/b'))
  np.testing.assert_allclose(norms, [[25.0, 30.0, 0.0], [0.25, 0.30, 0.0]], rtol=1e-6)


def test_conditional_utilization_rate_hand_computed():
  u = greedy.conditional_utilization_rate(0.8, {'gray': 0.2, 'color': 0.78})
  assert u['gray'] == pytest.approx(0.75) and u['color'] == pytest.approx(0.025)
  assert np.isnan(greedy.conditional_utilization_rate(0.0, {'a': 0.1})['a'])


@pytest.fixture(scope='module')
def trainer():
  """One guided trainer shared by the tests of this file (its steps compile once)."""
  return train.Trainer(tiny_synthetic_config('greedy', mode='guided'))


@pytest.fixture(scope='module')
def trained(trainer):  # pylint: disable=redefined-outer-name
  """Two epochs of guided training: the final state and each step's re-balancing flag."""
  state = trainer.init_state()
  flags = []
  for _ in range(2 * trainer.steps_per_epoch):
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    flags.append(float(step_metrics['greedy/rebalancing']))
  return state, flags


def _method(trainer, **config):  # pylint: disable=redefined-outer-name
  """A greedy method with ``config`` set up on ``trainer``'s model and data."""
  method = greedy.BalancedMultimodalLearning(config, trainer.heads, trainer.modalities)
  method.setup(trainer.context)
  return method


def _scaled_grads(params, factors):
  """Gradients equal to ``factor * params`` per top-level group (``mmtm_*`` per layer)."""
  out = {}
  for top, sub in params.items():
    if top.startswith('mmtm_'):
      out[top] = {layer: jax.tree.map(lambda x, f=factors[layer]: f * x, p) for layer, p in sub.items()}
    else:
      out[top] = jax.tree.map(lambda x, f=factors[top]: f * x, sub)
  return out


def _update(method):
  """``method``'s jitted ``update_state``, fed parameters, gradients ``factor * params`` and
  constant MMTM scales: ``update(method_state, params, step, factors, scale_value)``."""

  @jax.jit
  def update(method_state, params, step, grads, aux):
    return method.update_state(method_state, StepInfo(
        step=step, params=params, new_params=params, grads=grads, outputs={}, losses={}, aux=aux))

  cache = {}

  def call(method_state, params, step, factors, scale_value):
    key = (tuple(sorted(factors.items())), tuple(sorted(scale_value.items())))
    if key not in cache:
      cache[key] = (_scaled_grads(params, factors), {
          f'mmtm_{i}': {f'scale_{m}': (jnp.full((3, c[m]), scale_value[m]),) for m in MODALITIES}
          for i, c in enumerate(method.mmtm_channels)})
    return update(method_state, params, jnp.int32(step), *cache[key])

  return call


def test_guided_trigger_window_averages_and_speed_sums_by_hand(trainer):
  method, state = _method(trainer, mode='guided', window=2, alpha=0.1), trainer.init_state()
  update = _update(method)
  assert method.start_step == trainer.steps_per_epoch  # starting_epoch=2: one plain epoch
  sq = lambda tree: sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(tree))
  p = jax.device_get(state.params)
  mmtm = [p[k] for k in p if k.startswith('mmtm_')]
  squeeze_norm = sum(sq(m['squeeze']) for m in mmtm)
  # gradient = factor * params, so mu = factor^2 for a group with one factor.
  factors = {'encoders_a': 0.1, 'head_a': 0.1, 'encoders_b': 0.1, 'head_b': 0.1,
             'squeeze': 1.0, 'excite_a': 1.0, 'excite_b': 0.0}
  mu_fusion_b = squeeze_norm / (squeeze_norm + sum(sq(m['excite_b']) for m in mmtm))
  s_a, s_b = np.log10(1.0 / 0.01), np.log10(mu_fusion_b / 0.01)
  assert s_a - s_b > 0.1

  ms = method.init_state()
  # A normal step before the starting epoch: sums and averages move, nothing triggers.
  ms, out = update(ms, state.params, 0, factors, {'a': 0.2, 'b': 0.6})
  assert int(ms['remaining']) == 0 and float(out['greedy/rebalancing']) == 0
  metrics_ = jax.device_get(method.state_metrics(ms))
  assert metrics_['greedy/speed/a'] == pytest.approx(s_a, rel=1e-5)
  assert metrics_['greedy/speed/b'] == pytest.approx(s_b, rel=1e-5)
  assert metrics_['greedy/d_speed'] == pytest.approx(s_a - s_b, rel=1e-5)
  np.testing.assert_allclose(ms['average_scales']['b'][0], 0.6, rtol=1e-6)
  # A normal step in the guided epoch: d_speed > alpha -> the next 2 steps re-balance branch 0.
  start = method.start_step
  ms, _ = update(ms, state.params, start, factors, {'a': 0.4, 'b': 1.0})
  assert int(ms['remaining']) == 2 and int(ms['branch']) == 0
  np.testing.assert_allclose(ms['average_scales']['a'][-1], 0.3, rtol=1e-6)  # (0.2 + 0.4) / 2
  np.testing.assert_allclose(ms['average_scales']['b'][-1], 0.8, rtol=1e-6)  # its own scales
  flags = method.model_kwargs(ms, jax.random.PRNGKey(0))['rebalance']
  assert bool(flags['a']) and not bool(flags['b'])
  sums = jax.device_get(ms['speed_sums'])
  for step in (start + 1, start + 2):  # re-balancing steps: no averages, no speed, counted
    ms, out = update(ms, state.params, step, factors, {'a': 0.9, 'b': 0.9})
    assert float(out['greedy/rebalancing']) == 1
    np.testing.assert_allclose(ms['average_scales']['a'][-1], 0.3, rtol=1e-6)
    assert jax.device_get(ms['speed_sums']) == sums
  assert int(ms['remaining']) == 0 and int(ms['normal_steps']) == 2
  assert int(ms['rebalance_steps']['a']) == 2 and int(ms['rebalance_steps']['b']) == 0
  # The other way round: branch 1 learns more through fusion -> branch 1 is re-balanced.
  flipped = dict(factors, excite_a=0.0, excite_b=1.0)
  ms = method.init_state()
  ms, _ = update(ms, state.params, start, flipped, {'a': 0.5, 'b': 0.5})
  assert int(ms['remaining']) == 2 and int(ms['branch']) == 1


def test_off_never_rebalances_and_random_picks_all_choices(trainer):
  factors = {'encoders_a': 0.1, 'head_a': 0.1, 'encoders_b': 0.1, 'head_b': 0.1,
             'squeeze': 1.0, 'excite_a': 1.0, 'excite_b': 0.0}
  state = trainer.init_state()
  off = _method(trainer, mode='off')
  ms, off_update = off.init_state(), _update(off)
  for step in range(3 * trainer.steps_per_epoch):
    ms, _ = off_update(ms, state.params, step, factors, {'a': 0.5, 'b': 0.5})
    assert int(ms['remaining']) == 0
  rand = _method(trainer, mode='random')
  ms, update = rand.init_state(), _update(rand)
  seen = []
  for step in range(rand.start_step - 1, rand.start_step + 149):
    ms, _ = update(ms, state.params, step, factors, {'a': 0.5, 'b': 0.5})
    seen.append(-1 if int(ms['remaining']) == 0 else int(ms['branch']))
  counts = np.bincount(np.asarray(seen) + 1, minlength=3)
  assert all(25 < c < 75 for c in counts), counts  # uniform over {normal, a, b}
  early = rand.init_state()
  early, _ = update(early, state.params, 0, factors, {'a': 0.5, 'b': 0.5})
  assert int(early['remaining']) == 0  # before the starting epoch every step is normal


def test_random_mode_keeps_the_first_step_of_the_starting_epoch_normal(trainer):
  # Official Bias_Mitigation_Random draws the next step's mode after each backward pass of an
  # unlocked epoch, so the step after the last one of epoch 1 (0-based step start_step) is
  # normal, and the draw after it may re-balance.
  factors = {'encoders_a': 0.1, 'head_a': 0.1, 'encoders_b': 0.1, 'head_b': 0.1,
             'squeeze': 1.0, 'excite_a': 1.0, 'excite_b': 0.0}
  state = trainer.init_state()
  rand = _method(trainer, mode='random')
  update = _update(rand)
  after_last_plain, after_first_unlocked = [], []
  for key in range(20):
    ms = dict(rand.init_state(), rng=jax.random.PRNGKey(key))
    ms, _ = update(ms, state.params, rand.start_step - 1, factors, {'a': 0.5, 'b': 0.5})
    after_last_plain.append(int(ms['remaining']))
    ms, _ = update(ms, state.params, rand.start_step, factors, {'a': 0.5, 'b': 0.5})
    after_first_unlocked.append(int(ms['remaining']))
  assert after_last_plain == [0] * 20
  assert 0 < sum(after_first_unlocked) < 20


def test_random_stream_is_the_methods_own(trainer):
  # The trainer's root key PRNGKey(seed) and its two halves (init, dropout) are never the
  # method's key, and the method's key still follows the seed.
  method = _method(trainer, mode='random')
  key = np.asarray(method.init_state()['rng'])
  root = jax.random.PRNGKey(trainer.seed)
  for other in (root, *jax.random.split(root)):
    assert not np.array_equal(key, np.asarray(other))
  method._seed = trainer.seed + 1  # pylint: disable=protected-access
  assert not np.array_equal(key, np.asarray(method.init_state()['rng']))


def test_guided_training_never_recompiles_and_rebalances(trainer, trained):
  state, counts = trained
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access
  assert sum(counts[:trainer.steps_per_epoch]) == 0 and sum(counts) > 0
  ms = jax.device_get(state.method_state)
  assert sum(int(c) for c in ms['rebalance_steps'].values()) == sum(counts)
  assert int(ms['normal_steps']) == len(counts) - sum(counts)
  assert all(np.all((s > 0) & (s < 1)) for s in jax.tree.leaves(ms['average_scales']))


def _hand_mmtm_network(params, inputs, replace=None):
  """The tiny MMTM network (one-stage MLP branches, one MMTM) in float64 numpy, from the params.

  Returns each branch's first-stage features (its squeeze) and its logits; ``replace`` maps a
  modality to the vector that stands in for its squeeze inside the MMTM.
  """
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(params))
  dense = lambda x, layer: x @ layer['kernel'] + layer['bias']
  relu = lambda x: np.maximum(x, 0.0)
  features = {m: relu(dense(inputs[m].astype(np.float64), p[f'encoders_{m}']['stages_0']['Dense_0']))
              for m in MODALITIES}
  squeezes = [np.broadcast_to(replace[m], features[m].shape) if replace and m in replace
              else features[m] for m in MODALITIES]
  hidden = relu(dense(np.concatenate(squeezes, -1), p['mmtm_0']['squeeze']))
  logits = {}
  for m in MODALITIES:
    scale = 1.0 / (1.0 + np.exp(-dense(hidden, p['mmtm_0'][f'excite_{m}'])))
    logits[m] = dense(dense(features[m] * scale, p[f'encoders_{m}']['head']), p[f'head_{m}'])
  return features, logits


def test_utilization_rate_matches_a_network_built_by_hand(trainer, trained):
  # f'_k (Wu et al., Sec. 4.1) rebuilt with numpy from the parameters: branch k's MMTM sees the
  # other modality's squeeze replaced by its mean over the train split.
  state, _ = trained
  ctx = trainer.context
  [evaluator] = trainer.evaluators  # the greedy method lists the utilization evaluator
  assert trainer.model.mmtm_stages == (0,) and len(trainer.model.encoders['a'].stage_channels) == 1
  train_split, val = trainer.dataset.splits['train'], trainer.dataset.splits['val']
  train_features, _ = _hand_mmtm_network(state.params, train_split.inputs)
  means = {m: train_features[m].mean(0) for m in MODALITIES}
  got = evaluator.mean_squeeze(ctx, state)
  for m in MODALITIES:
    np.testing.assert_allclose(got[m][0], means[m], rtol=1e-4, atol=1e-6)
  _, full = _hand_mmtm_network(state.params, val.inputs)
  accuracy = lambda logits: float(np.mean(np.argmax(logits, -1) == val.label))
  a_f = accuracy((full['a'] + full['b']) / 2)
  result = evaluator.evaluate(ctx, state, 'val', trainer.evaluate(state, 'val'))
  # The mean cross-entropy of every f'_k, from the evaluator's own evaluation pass.
  losses = evaluator.unimodal_results(ctx, state, 'val')
  for k, other in (('a', 'b'), ('b', 'a')):
    _, unimodal = _hand_mmtm_network(state.params, val.inputs, replace={other: means[other]})
    assert not np.allclose(unimodal[k], full[k], atol=1e-3)  # the replacement matters here
    shifted = unimodal[k] - unimodal[k].max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    cross_entropy = -np.mean(log_probs[np.arange(len(val.label)), val.label])
    assert losses[f'loss/{k}'] == pytest.approx(cross_entropy, rel=1e-4)
    a_k = accuracy(unimodal[k])
    assert result[f'greedy/acc_unimodal/{k}'] == pytest.approx(a_k)
    assert result[f'greedy/u/{k}'] == pytest.approx((a_f - a_k) / a_f)
  assert result['greedy/d_util'] == pytest.approx(result['greedy/u/a'] - result['greedy/u/b'])


def test_train_and_evaluate_logs_greedy_keys(tmp_path):
  config = tiny_synthetic_config('greedy', mode='guided')
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(config, workdir)
  assert set(summary['test_at_best']) == {'fused', 'a', 'b'}
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['model']['name'] == 'mmtm'
  records = metrics.read_metrics(workdir)
  last_train = metrics.select(records, 'train')[-1]
  for key in ('greedy/d_speed', 'greedy/speed/a', 'greedy/rebalance/b', 'greedy/weight/fused'):
    assert np.isfinite(last_train[key]), key
  assert last_train['greedy/rebalance/a'] + last_train['greedy/rebalance/b'] > 0
  for split in ('val', 'test'):
    for record in metrics.select(records, split):
      for key in ('greedy/u/a', 'greedy/u/b', 'greedy/d_util', 'greedy/acc_unimodal/a'):
        assert np.isfinite(record[key]), key


def test_three_modalities_use_spreads():
  config = tiny_synthetic_config('greedy', mode='guided')
  with config.unlocked():
    config.data.modalities = ('a', 'b', 'c')
    for key in ('dim', 'signal', 'clusters_per_class', 'shortcut', 'noise_dims'):
      config.data[key] = tuple(config.data[key]) + (config.data[key][0],)
    config.model.encoders['c'] = dict(config.model.encoders['a'])
  three = train.Trainer(config)
  state = three.init_state()
  logged = jax.device_get(three.method.state_metrics(state.method_state))
  assert 'greedy/speed_spread' in logged and 'greedy/d_speed' not in logged
  [evaluator] = three.evaluators
  evaluated = evaluator.evaluate(three.context, state, 'val', three.evaluate(state, 'val'))
  assert 'greedy/util_spread' in evaluated and 'greedy/u/c' in evaluated


@pytest.mark.parametrize('option, value, match', [
    ('mode', 'sometimes', 'valid modes'),
    ('starting_epoch', 1, 'starting_epoch'),
    ('window', 0, 'window'),
])
def test_bad_options_are_named(option, value, match):
  with pytest.raises(ValueError, match=match):
    greedy.BalancedMultimodalLearning({option: value}, ('fused', 'a', 'b'), MODALITIES)


def test_needs_the_mmtm_model():
  config = tiny_synthetic_config('greedy')
  config.model = ml_collections.ConfigDict({'name': 'late_fusion',
                                            'encoders': config.model.encoders.to_dict()})
  with pytest.raises(ValueError, match="needs model.name = 'mmtm'"):
    train.Trainer(config)



def test_resume_inside_guided_training_is_bit_identical(tmp_path):
  """Window, running averages, speed sums and counts all come back from the checkpoint."""
  config = tiny_synthetic_config('greedy', mode='guided')
  config.num_epochs = 3
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=2)
  last = metrics.select(metrics.read_metrics(full), 'train')[-1]
  assert last['greedy/rebalance/a'] + last['greedy/rebalance/b'] > 0
