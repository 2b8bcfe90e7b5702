"""Gradient Blending: formulas against hand-computed values, estimators, compile counts, resume."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_resume_is_bit_identical, tiny_synthetic_config
from configs import synthetic
from mmjax import data, metrics, train
from mmjax.data.dataset import derive_seed
from mmjax.methods import gblend_fn, ogr
from mmjax.methods.gblend import GradientBlending
from mmjax.models import LateFusionClassifier, MLPEncoder
from mmjax.step import cross_entropy

HEADS = ('fused', 'a', 'b')


def _config(estimator, **method):
  config = tiny_synthetic_config('gblend', estimator=estimator)
  config.num_epochs = 3
  config.method.update({'warmup_epochs': 1, 'super_epoch': 1, 'every_steps': 2, **method})
  return config


# ----- formulas (hand-computed values) ---------------------------------------------------------
def test_generalization_and_overfitting_on_loss():
  # head 0: L^T 1.0 -> 0.5, L^V 1.2 -> 0.9: O_N = 0.2, O_N+n = 0.4, dO = 0.2, dG = 0.3.
  # head 1: L^T 2.0 -> 1.0, L^V 2.0 -> 1.5: O_N = 0.0, O_N+n = 0.5, dO = 0.5, dG = 0.5.
  delta_g, delta_o = ogr.generalization_and_overfitting(
      jnp.array([1.0, 2.0]), jnp.array([1.2, 2.0]), jnp.array([0.5, 1.0]), jnp.array([0.9, 1.5]))
  np.testing.assert_allclose(delta_g, [0.3, 0.5], rtol=1e-6)
  np.testing.assert_allclose(delta_o, [0.2, 0.5], rtol=1e-6)
  np.testing.assert_allclose(ogr.overfitting_to_generalization_ratio(delta_g, delta_o, 1e-3),
                             [0.2 / 0.3, 1.0], rtol=1e-6)


def test_generalization_and_overfitting_on_accuracy():
  # A^T 0.6 -> 0.9, A^V 0.5 -> 0.7: O = A^T - A^V goes 0.1 -> 0.2, dO = 0.1, dG = 0.2.
  delta_g, delta_o = ogr.generalization_and_overfitting(0.6, 0.5, 0.9, 0.7, 'accuracy')
  assert float(delta_g) == pytest.approx(0.2) and float(delta_o) == pytest.approx(0.1)
  with pytest.raises(ValueError, match='method.metric'):
    ogr.generalization_and_overfitting(0.6, 0.5, 0.9, 0.7, 'f1')


def test_ogr_is_finite_when_nothing_generalizes():
  assert float(ogr.overfitting_to_generalization_ratio(0.0, 0.5, 1e-3)) == pytest.approx(500.0)


def test_blend_weights_hand_computed():
  # dG / dO^2 = 0.3 / 0.04 = 7.5, 0.5 / 0.25 = 2, 0.2 / 0.01 = 20; Z = 29.5 (both rules agree
  # when every dO is above the floor).
  for rule in ('paper', 'clamped'):
    weights = ogr.blend_weights([0.3, 0.5, 0.2], [0.2, 0.5, 0.1], 1e-3, rule)
    np.testing.assert_allclose(weights, [7.5 / 29.5, 2 / 29.5, 20 / 29.5], rtol=1e-5)


def test_paper_rule_squares_the_signed_delta_o():
  """Issue 8's case: a head whose overfitting shrank (dO < 0) no longer takes all the weight."""
  delta_g, delta_o = [0.1, 0.4, 0.2], [0.5, -0.2, 0.2]
  # Paper: 0.1 / 0.25 = 0.4, 0.4 / 0.04 = 10, 0.2 / 0.04 = 5; Z = 15.4.
  np.testing.assert_allclose(ogr.blend_weights(delta_g, delta_o, 1e-3),
                             [0.4 / 15.4, 10 / 15.4, 5 / 15.4], rtol=1e-5)
  # The same head with dO = +0.2 gets the same weight: only dO^2 counts.
  np.testing.assert_allclose(ogr.blend_weights(delta_g, [0.5, 0.2, 0.2], 1e-3),
                             [0.4 / 15.4, 10 / 15.4, 5 / 15.4], rtol=1e-5)
  # Clamped (the old rule): dO = -0.2 becomes 1e-3, 0.4 / 1e-6 = 4e5 against 0.4 and 5.
  np.testing.assert_allclose(ogr.blend_weights(delta_g, delta_o, 1e-3, 'clamped'),
                             [0.4 / 400005.4, 4e5 / 400005.4, 5 / 400005.4], rtol=1e-5)
  with pytest.raises(ValueError, match='method.weight_rule'):
    ogr.blend_weights(delta_g, delta_o, 1e-3, 'absolute')


def test_blend_weights_degenerate_cases():
  for rule in ('paper', 'clamped'):
    # dG <= 0: weight 0; the others as before (7.5 and 2 of 9.5).
    np.testing.assert_allclose(ogr.blend_weights([0.3, 0.5, -0.1], [0.2, 0.5, 0.1], 1e-3, rule),
                               [7.5 / 9.5, 2 / 9.5, 0.0], rtol=1e-5)
    # No head generalized: uniform.
    np.testing.assert_allclose(ogr.blend_weights([0.0, -1.0, -2.0], [0.1, 0.2, 0.3], 1e-3, rule),
                               [1 / 3] * 3, rtol=1e-6)
    # Ratios beyond float32 range still normalise: 1e30 / 1e-6 against 1 / 1.
    np.testing.assert_allclose(ogr.blend_weights([1e30, 1.0], [1e-3, 1.0], 1e-3, rule),
                               [1.0, 1e-36], rtol=1e-4, atol=1e-38)
  # |dO| below the floor (0.1): 0 and -0.05 count as 0.1, 0.4 / 0.01 = 40 against 0.5 / 0.25 = 2.
  for tiny in (0.0, -0.05):
    np.testing.assert_allclose(ogr.blend_weights([0.4, 0.5], [tiny, 0.5], 0.1),
                               [40 / 42, 2 / 42], rtol=1e-5)
  # dO = -3: the paper rule gives 0.4 / 9 against 2; the clamped rule 0.4 / 0.01 = 40 against 2.
  np.testing.assert_allclose(ogr.blend_weights([0.4, 0.5], [-3.0, 0.5], 0.1),
                             [(0.4 / 9) / (0.4 / 9 + 2), 2 / (0.4 / 9 + 2)], rtol=1e-5)
  np.testing.assert_allclose(ogr.blend_weights([0.4, 0.5], [-3.0, 0.5], 0.1, 'clamped'),
                             [40 / 42, 2 / 42], rtol=1e-5)


_LIMIT = float(np.float32(3e38))
_finite = st.floats(min_value=-_LIMIT, max_value=_LIMIT, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5).flatmap(lambda k: st.tuples(st.lists(_finite, min_size=k, max_size=k),
                                                     st.lists(_finite, min_size=k, max_size=k))),
       st.sampled_from([1e-6, 1e-3, 1.0]), st.sampled_from(ogr.WEIGHT_RULES))
def test_blend_weights_are_a_distribution(deltas, min_delta_o, rule):
  weights = np.asarray(ogr.blend_weights(*deltas, min_delta_o, rule))
  assert np.isfinite(weights).all() and (weights >= 0).all()
  assert weights.sum() == pytest.approx(1.0, abs=1e-5)
  delta_g = np.asarray(deltas[0], np.float32)
  if (delta_g > 1e-30).any():  # some head generalized (tinier ones may flush to 0): no weight on dG <= 0
    assert (weights[delta_g <= 0] == 0).all()


def test_split_batch_generalization_and_overfitting():
  first = {'x': jnp.array([1.0, 2.0]), 'y': jnp.array([[3.0]])}
  second = {'x': jnp.array([3.0, 0.0]), 'y': jnp.array([[1.0]])}
  heldout = {'x': jnp.array([0.5, -1.0]), 'y': jnp.array([[2.0]])}
  # Direction (2, 1, 2): G = 1 - 1 + 4 = 4; <g_1, g_2> = 3 + 0 + 3 = 6, O = 6 - 4 = 2.
  g, o = ogr.split_batch_generalization_and_overfitting(first, second, heldout)
  assert float(g) == pytest.approx(4.0) and float(o) == pytest.approx(2.0)


# ----- held-out data ---------------------------------------------------------------------------
def test_heldout_split_is_stratified_disjoint_and_deterministic():
  config = _config('online')
  trainer = train.Trainer(config)
  method = trainer.method
  train_split = trainer.dataset.splits['train']
  assert len(method.heldout) == round(0.08 * config.data.num_train)
  assert len(train_split) + len(method.heldout) == config.data.num_train
  assert len(method.train_subset) == len(method.heldout)
  assert np.bincount(method.heldout.label).max() - np.bincount(method.heldout.label).min() <= 1
  rows = {tuple(x) for x in train_split.inputs['a']}
  assert not any(tuple(x) in rows for x in method.heldout.inputs['a'])
  assert all(tuple(x) in rows for x in method.train_subset.inputs['a'])
  again = train.Trainer(config).method
  np.testing.assert_array_equal(again.heldout.inputs['b'], method.heldout.inputs['b'])
  np.testing.assert_array_equal(again.train_subset.label, method.train_subset.label)


def test_bad_options_are_named():
  with pytest.raises(ValueError, match='method.estimator'):
    GradientBlending({'estimator': 'bayes'}, HEADS, ('a', 'b'))
  with pytest.raises(ValueError, match='method.heldout_fraction'):
    GradientBlending({'heldout_fraction': 1.5}, HEADS, ('a', 'b'))
  with pytest.raises(ValueError, match='estimator'):
    synthetic.get_config('method=gblend,estimator=bayes')
  assert synthetic.get_config('method=gblend,estimator=offline').method.estimator == 'offline'


def test_super_epoch_boundaries():
  config = tiny_synthetic_config('gblend', estimator='online')
  config.num_epochs = 20  # the paper's schedule: warm-up 10, then 5
  online = train.Trainer(config).method
  assert {e: online.estimation_epochs_at(e) for e in range(20) if online.estimation_epochs_at(e)} \
      == {0: 10, 10: 5, 15: 5}
  config.method.estimator = 'offline'
  offline = train.Trainer(config).method
  assert [offline.estimation_epochs_at(e) for e in range(3)] == [20, 0, 0]


# ----- offline / online estimation -------------------------------------------------------------
@pytest.fixture(scope='module')
def online_trainer():
  """One online trainer shared by the tests below (its compiled steps are built once).

  SGD with momentum 0.9 and learning rate 0.1: the reference updates below are written by hand.
  """
  config = _config('online')
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.1
  return train.Trainer(config)


def _ce(trainer, params, head, inputs, labels, scales=None):
  outputs = trainer.model.apply({'params': params}, inputs, train=True, head_grad_scale=scales)
  return jnp.mean(cross_entropy(outputs[head], labels))


def _after_one_main_step(trainer):
  """The state after one main step (uniform weights) and that step's gradient ``g0``, by hand."""
  state = trainer.init_state()
  batch = trainer.next_batch()
  g0 = jax.jit(jax.grad(lambda p: sum(_ce(trainer, p, h, batch['inputs'], batch['label']) / 3
                                      for h in HEADS)))(state.params)
  state, _ = trainer.jit_train_step(state, batch)
  return state, g0


@functools.partial(jax.jit, static_argnums=(0, 2))
def _copy_gradient(trainer, params, head, batch):
  """Gradient of copy ``head``: its CE into everything, the other heads' CE as probes."""
  scales = {h: jnp.float32(1.0 if h == head else 0.0) for h in HEADS}
  return jax.grad(lambda p: sum(_ce(trainer, p, h, batch['inputs'], batch['label'], scales)
                                for h in HEADS))(params)


def test_estimation_copies_train_their_head_from_the_inherited_optimiser_state(online_trainer):
  """One step of each copy against SGD with momentum by hand, the momentum ``g0`` inherited.

  Copy ``i`` trains only what head ``i`` reads (O(k) estimation): copy ``a`` moves encoder
  ``a`` and head ``a`` and leaves every other parameter exactly as it was; the fused copy
  moves every encoder and the fused head, not the unimodal heads.
  """
  trainer = online_trainer
  state, g0 = _after_one_main_step(trainer)
  batch = trainer.next_batch()
  owned = {'fused': ('encoders_a', 'encoders_b', 'head_fused'), 'a': ('encoders_a', 'head_a'),
           'b': ('encoders_b', 'head_b')}
  for i, head in enumerate(HEADS):
    copy = state.replace(method_state={'weights': {
        h: jnp.float32(1.0 if h == head else 0.0) for h in HEADS}})
    new = trainer.method._copy_steps[i](  # pylint: disable=protected-access
        jax.device_put(copy, trainer.replicated), trainer.shard(batch))
    g = _copy_gradient(trainer, state.params, head, batch)
    for name in state.params:
      want = (jax.tree.map(lambda p, gi, m: p - 0.1 * (gi + 0.9 * m), state.params[name],
                           g[name], g0[name]) if name in owned[head] else state.params[name])
      for got, expected in zip(jax.tree.leaves(new.params[name]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=(head, name))
  assert trainer.method.copy_groups('a') == {'branch/a', 'head/a'}
  assert trainer.method.copy_groups('fused') == {'branch/a', 'branch/b', 'head/fused'}


def test_vmap_and_sequential_estimates_match_a_reference_by_hand(online_trainer):
  """``measure`` of each copy against head ``i``'s losses after SGD written by hand.

  A copy reading another head's losses, or trained on another head, fails here even if the
  vmapped and sequential runs agree with each other.
  """
  trainer, method = online_trainer, online_trainer.method
  state, g0 = _after_one_main_step(trainer)
  splits = {'train': method.train_subset, 'heldout': method.heldout}

  @jax.jit
  def losses(params, inputs, labels):
    outputs = trainer.model.apply({'params': params}, inputs, train=False)
    return {h: jnp.mean(cross_entropy(outputs[h], labels)) for h in HEADS}

  def split_loss(params, head, split):
    return float(losses(params, split.inputs, split.label)[head])

  reference = {key: [] for key in
               ('train_before', 'heldout_before', 'train_after', 'heldout_after')}
  for head in HEADS:
    params, momentum = state.params, g0
    for batch in method._estimation_batches(trainer.context, 0, 1)():  # pylint: disable=protected-access
      momentum = jax.tree.map(lambda gi, m: gi + 0.9 * m,
                              _copy_gradient(trainer, params, head, batch), momentum)
      params = jax.tree.map(lambda p, m: p - 0.1 * m, params, momentum)
    for name, split in splits.items():
      reference[f'{name}_before'].append(split_loss(state.params, head, split))
      reference[f'{name}_after'].append(split_loss(params, head, split))
  for mode in ('vmap', 'sequential'):
    method.estimation = mode
    measured = method.measure(trainer.context, state, epoch=0, num_epochs=1)
    for key, values in reference.items():
      np.testing.assert_allclose(measured[key], values, rtol=1e-4, err_msg=f'{mode} {key}')
    np.testing.assert_allclose(measured['delta_g'], np.subtract(reference['heldout_before'],
                                                                reference['heldout_after']),
                               rtol=1e-3, atol=1e-6)
  method.estimation = 'vmap'


def test_estimation_is_linear_in_the_heads_and_auto_picks_the_cheaper_mode(online_trainer):
  """XLA drops what a copy's head does not read: a unimodal copy's compiled step costs less
  than the fused copy's, and all per-copy steps together less than the vmapped step of the
  k + 1 full copies, which ``estimation='auto'`` then does not pick (on the host: no memory
  limit)."""
  from mmjax.methods import gblend  # pylint: disable=import-outside-toplevel
  trainer, method = online_trainer, online_trainer.method
  state = trainer.init_state()
  batch = next(method._estimation_batches(trainer.context, 0, 1)())  # pylint: disable=protected-access
  copy = jax.device_put(state.replace(method_state={'weights': {h: jnp.float32(1.0)
                                                                for h in HEADS}}),
                        trainer.replicated)
  flops = [gblend._flops(step.lower(copy, batch).compile())  # pylint: disable=protected-access
           for step in method._copy_steps]  # pylint: disable=protected-access
  stacked = gblend_fn.stack_copies([copy] * 3)
  vmapped = gblend._flops(  # pylint: disable=protected-access
      method._stacked_estimation_step.lower(stacked, batch).compile())  # pylint: disable=protected-access
  assert max(flops[1:]) < flops[0] and sum(flops) < vmapped
  method.estimation = 'auto'
  assert method.estimation_mode(trainer.context, state) == 'sequential'
  method.estimation = 'vmap'
  assert method.estimation_mode(trainer.context, state) == 'vmap'


def test_estimation_fraction_trains_the_copies_on_a_seeded_subset(online_trainer):
  trainer, method = online_trainer, online_trainer.method
  split = trainer.dataset.splits['train']
  labels = lambda b: np.asarray(b['label'])  # noqa: E731
  full = [labels(b) for b in method._estimation_batches(trainer.context, 1, 1)()]  # pylint: disable=protected-access
  method.estimation_fraction = 0.25
  try:
    part = [labels(b) for b in method._estimation_batches(trainer.context, 1, 2)()]  # pylint: disable=protected-access
  finally:
    method.estimation_fraction = 1.0
  size = max(trainer.config.batch_size, round(0.25 * len(split)))
  steps = size // trainer.config.batch_size
  assert len(full) == len(split) // trainer.config.batch_size and len(part) == 2 * steps
  seed = derive_seed(trainer.seed, 103, 1)
  subset = split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:size]))
  expected = data.TrainIterator(subset, trainer.config.batch_size, seed)
  for got in part:
    np.testing.assert_array_equal(got, next(expected)['label'])
  with pytest.raises(ValueError, match='estimation_fraction'):
    gblend_cls = type(method)
    gblend_cls({'estimation_fraction': 0.0}, HEADS, ('a', 'b'))


def test_online_run_never_recompiles_and_logs_estimates(online_trainer):
  trainer, method, config = online_trainer, online_trainer.method, online_trainer.config
  state = trainer.init_state()
  seen = []
  for epoch in range(config.num_epochs):
    state, logged = method.on_epoch_start(trainer.context, state, epoch)
    seen.append(logged)
    for _ in range(trainer.steps_per_epoch):
      state, _ = trainer.jit_train_step(state, trainer.next_batch())
  assert all(seen) and len(seen) == 3  # an estimate before each of the 3 epochs
  for logged in seen:
    for family in ('weight', 'delta_g', 'delta_o', 'ogr'):
      assert all(np.isfinite(logged[f'gblend/{family}/{h}']) for h in HEADS)
    assert sum(logged[f'gblend/weight/{h}'] for h in HEADS) == pytest.approx(1.0, abs=1e-5)
  assert seen[0] != seen[1]
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access
  assert method._stacked_estimation_step._cache_size() == 1  # pylint: disable=protected-access
  # The weights in force are the last estimate's.
  assert float(state.method_state['weights']['a']) == pytest.approx(seen[-1]['gblend/weight/a'])


def _check_logged_estimates(workdir, moved_from_uniform=True):
  last = metrics.select(metrics.read_metrics(workdir), 'train')[-1]
  weights = [last[f'gblend/weight/{h}'] for h in HEADS]
  assert sum(weights) == pytest.approx(1.0, abs=1e-5) and min(weights) >= 0
  assert all(np.isfinite(last[f'gblend/{k}/{h}']) for k in ('delta_g', 'delta_o', 'ogr')
             for h in HEADS)
  if moved_from_uniform:
    assert weights != pytest.approx([1 / 3] * 3)


def test_offline_on_accuracy_trains_end_to_end(tmp_path):
  config = _config('offline', metric='accuracy', estimation_epochs=1)
  config.num_epochs = 2
  summary = train.train_and_evaluate(config, str(tmp_path))
  _check_logged_estimates(str(tmp_path), moved_from_uniform=False)
  records = metrics.select(metrics.read_metrics(str(tmp_path)), 'train')
  assert [r['epoch'] for r in records] == [0, 1, 2]  # one estimate, at epoch 0
  assert records[0]['gblend/weight/a'] == records[-1]['gblend/weight/a']
  assert set(summary['test_at_best']) == set(HEADS)


# ----- gradient estimator --------------------------------------------------------------------
@pytest.fixture(scope='module')
def gradient_trainer():
  """A gradient-estimator trainer with plain SGD (update = -0.1 * gradient), weights every 3 steps."""
  config = _config('gradient', every_steps=3)
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.learning_rate = 0.1
  return train.Trainer(config)


def test_gradient_estimator_applies_blended_gradient_and_measures_g_o(gradient_trainer):
  trainer = gradient_trainer
  state = trainer.init_state()
  weights = {'fused': 0.5, 'a': 0.3, 'b': 0.0}  # b is a probe
  # Step index 2: with every_steps = 3 the step ends with a weight update.
  state = jax.device_put(state.replace(step=jnp.int32(2), method_state={
      **state.method_state, 'weights': {h: jnp.float32(w) for h, w in weights.items()}}),
                         trainer.replicated)
  batch = trainer.next_batch()
  new_state, _ = trainer.jit_train_step(state, batch)

  def head_loss(params, head, inputs, labels, detach=False):
    scales = {h: 0.0 for h in HEADS} if detach else None
    outputs = trainer.model.apply({'params': params}, inputs, train=True, head_grad_scale=scales)
    return jnp.mean(cross_entropy(outputs[head], labels))

  head_grad = jax.jit(jax.grad(head_loss), static_argnums=(1, 4))

  def grad(head, b, detach=False):
    return head_grad(state.params, head, b['inputs'], b['label'], detach)

  expected = jax.tree.map(lambda f, a, b: 0.5 * f + 0.3 * a + b,
                          grad('fused', batch), grad('a', batch), grad('b', batch, detach=True))
  for p, q, g in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params),
                     jax.tree.leaves(expected)):
    np.testing.assert_allclose((p - q) / 0.1, g, rtol=2e-4, atol=1e-6)
  # G and O by hand from the two halves and the V batch (flattened float64 vectors); the EMA
  # from zero after this one update is (1 - 0.98) x, debiased by 1 - 0.98^3.
  half = len(batch['label']) // 2
  first = jax.tree.map(lambda x: x[:half], batch)
  second = jax.tree.map(lambda x: x[half:], batch)
  debias = 1 - 0.98 ** 3
  g_values, o_values = [], []
  for h in HEADS:
    g1, g2, gv = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(
        grad(h, b))]) for b in (first, second, batch['heldout']))
    g_values.append(gv @ ((g1 + g2) / 2))
    o_values.append(g1 @ g2 - g_values[-1])
  delta_g = [0.02 * g / debias for g in g_values]
  delta_o = [np.sqrt(0.02 * o**2 / debias) for o in o_values]
  ratios = [dg / max(do, 1e-3) ** 2 if dg > 0 else 0.0 for dg, do in zip(delta_g, delta_o)]
  for i, h in enumerate(HEADS):
    assert float(new_state.method_state['delta_g'][h]) == pytest.approx(delta_g[i], rel=1e-3)
    assert float(new_state.method_state['delta_o'][h]) == pytest.approx(delta_o[i], rel=1e-3)
    assert float(new_state.method_state['weights'][h]) == pytest.approx(
        ratios[i] / sum(ratios), rel=1e-3)


def test_gradient_estimator_logs_the_estimate_behind_its_weights(gradient_trainer):
  """Issue 8 item 3: at any step, the logged dG, dO give the weights in force (by hand)."""
  trainer = gradient_trainer
  state = trainer.init_state()
  logged = []
  for _ in range(4):  # weights change after step 3 (every_steps = 3), not after step 4
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
    logged.append({k: {h: float(v) for h, v in state.method_state[k].items()}
                   for k in ('weights', 'delta_g', 'delta_o')})
  assert logged[3] == logged[2]
  ratios = {h: logged[3]['delta_g'][h] / max(abs(logged[3]['delta_o'][h]), 1e-3) ** 2
            if logged[3]['delta_g'][h] > 0 else 0.0 for h in HEADS}
  for h in HEADS:
    assert logged[3]['weights'][h] == pytest.approx(ratios[h] / sum(ratios.values()), rel=1e-4)


def test_gradient_weights_update_every_m_steps_without_recompiling(gradient_trainer):
  trainer = gradient_trainer
  state = trainer.init_state()
  history = []
  for _ in range(6):
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
    history.append(tuple(float(state.method_state['weights'][h]) for h in HEADS))
  assert history[0] == history[1] == (pytest.approx(1 / 3),) * 3  # unchanged before step 3
  assert history[2] != history[1] and history[3] == history[4] == history[2]
  assert history[5] != history[4] and sum(history[5]) == pytest.approx(1.0, abs=1e-5)
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


# ----- resume ----------------------------------------------------------------------------------
def test_gradient_heldout_stream_follows_a_resumed_main_stream(gradient_trainer):
  """A new process resuming at epoch 1 draws the same V batches as an uninterrupted run."""
  trainer, method = gradient_trainer, gradient_trainer.method

  def run_epoch(state, epoch):
    state, _ = method.on_epoch_start(trainer.context, state, epoch)
    for _ in range(trainer.steps_per_epoch):
      state, _ = trainer.jit_train_step(state, trainer.next_batch())
    return state

  trainer.train_iterator.set_state({**trainer.train_iterator.get_state(), 'step': 0})
  middle = run_epoch(trainer.init_state(), 0)
  position = trainer.train_iterator.get_state()
  full = run_epoch(middle, 1)
  trainer.train_iterator.set_state(position)  # what a restart restores from the checkpoint
  method.setup(trainer.context)  # a fresh process: the V stream starts over
  resumed = run_epoch(middle, 1)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)


def test_resume_across_online_reestimation_is_bit_identical(tmp_path):
  config = _config('online')  # estimates before epochs 0 and 1; the run stops after epoch 0
  config.num_epochs = 2
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  _check_logged_estimates(full)


# ----- the gradient estimator is unbiased (statistical) -----------------------------------------
def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_gradient_estimator_is_unbiased_for_two_batch_sizes():
  """Means of G_i, O_i over many sampled batches match the full-data values of §3.2.

  A tiny late-fusion model on a fixed data set (64 training, 32 held-out examples); full-data
  per-head gradients come from ``jax.grad`` on all of it: ``G = <grad L^V, grad L^T>``,
  ``O = <grad L^T - grad L^V, grad L^T>``. Batches are drawn with replacement (i.i.d.), 1,000
  per batch size. Tolerance: 4 standard errors of the mean (two-sided, about 6e-5 chance per
  value to fail by luck; the draws are seeded, so the test is deterministic). The old
  same-batch estimator ``O = ||g_B||^2 - <g_V, g_B>`` is off by the gradient noise divided by
  the batch size, far more than 4 standard errors.
  """
  model = LateFusionClassifier({'a': MLPEncoder(hidden=(4,), features=3),
                                'b': MLPEncoder(hidden=(4,), features=3)}, num_classes=3)
  rng = np.random.default_rng(0)

  def examples(n):
    label = rng.integers(0, 3, n)
    return {'inputs': {'a': (rng.standard_normal((n, 2)) + label[:, None]).astype(np.float32),
                       'b': rng.standard_normal((n, 2)).astype(np.float32)},
            'label': label.astype(np.int32)}

  train_data, heldout_data = examples(64), examples(32)
  params = model.init(jax.random.PRNGKey(0), train_data['inputs'], train=False)['params']

  def loss_fn(p, batch, rng=None):
    del rng  # no dropout in this model
    outputs = model.apply({'params': p}, batch['inputs'], train=True)
    losses = {h: jnp.mean(cross_entropy(outputs[h], batch['label'])) for h in outputs}
    return sum(losses.values()), (outputs, losses, {}, {})

  @jax.jit
  def head_grads(batch):
    return {h: jax.grad(lambda p, h=h: loss_fn(p, batch)[1][1][h])(params) for h in HEADS}

  full_train, full_heldout = head_grads(train_data), head_grads(heldout_data)
  full = {}
  for h in HEADS:
    g_t, g_v = _flat(full_train[h]), _flat(full_heldout[h])
    full[h] = (g_v @ g_t, (g_t - g_v) @ g_t)

  method = GradientBlending({'estimator': 'gradient'}, HEADS, ('a', 'b'))
  method._parameter_groups = model.parameter_groups(params)  # pylint: disable=protected-access
  method_state = {'weights': {h: jnp.float32(1 / 3) for h in HEADS},
                  'heldout_rng': jax.random.PRNGKey(0)}

  def estimate(batch):
    (_, aux), _ = method.gradients(loss_fn, params, batch, method_state)
    return aux[3]['gblend']['g'], aux[3]['gblend']['o']

  def same_batch_overfitting(batch):  # the old estimator, by hand: ||g_B||^2 - <g_V, g_B>
    def per_head(h):
      g_b = jax.grad(lambda p: loss_fn(p, batch)[1][1][h])(params)
      g_v = jax.grad(lambda p: loss_fn(p, batch['heldout'])[1][1][h])(params)
      dot = lambda x, y: sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
      return dot(g_b, g_b) - dot(g_v, g_b)
    return jnp.stack([per_head(h) for h in HEADS])

  def take(data, index):
    return jax.tree.map(lambda x: x[index], data)

  samples = 1000
  old_bias_in_errors = []
  for batch_size in (8, 32):
    index = rng.integers(0, 64, (samples, batch_size))
    heldout_index = rng.integers(0, 32, (samples, batch_size))
    batches = {**take(train_data, index), 'heldout': take(heldout_data, heldout_index)}
    g, o, old_o = (np.asarray(x, np.float64) for x in jax.jit(jax.vmap(
        lambda b: (*estimate(b), same_batch_overfitting(b))))(batches))
    for i, h in enumerate(HEADS):
      for values, expected in ((g[:, i], full[h][0]), (o[:, i], full[h][1])):
        error = values.std() / np.sqrt(samples)
        assert abs(values.mean() - expected) < 4 * error, (batch_size, h, values.mean(), expected)
      old_error = old_o[:, i].std() / np.sqrt(samples)
      old_bias_in_errors.append((old_o[:, i].mean() - full[h][1]) / old_error)
  assert min(old_bias_in_errors) > 4, old_bias_in_errors


# ----- models and failures ---------------------------------------------------------------------
def test_gblend_refuses_a_model_whose_unimodal_heads_read_other_branches(tmp_path):
  """MMTM layers are shared by both branches: an estimation copy of head a would train b too."""
  config = _config('online')
  config.model = {'name': 'mmtm', 'encoders': config.model.encoders.to_dict(), 'mmtm_stages': (),
                  'mmtm_ratio': 4}
  with pytest.raises(ValueError, match=r"method 'gblend' needs unimodal heads .* fusion layers "
                                       r"\(fusion, fusion/a, fusion/b\)"):
    train.Trainer(config)


def test_non_finite_online_estimate_stops_the_run_naming_the_head():
  """Issue 13 item 11: a diverged estimation copy is an error, not a silent uniform fallback."""
  config = _config('online')
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 1e30
  trainer = train.Trainer(config)
  with pytest.raises(FloatingPointError, match=r'G-Blend estimate before epoch 1: non-finite '
                                               r'values for head\(s\) fused, a, b'):
    trainer.method.on_epoch_start(trainer, trainer.init_state(), 0)
