"""The methods as pure functions (mmjax.methods.gblend_fn, greedy_fn), checked by hand."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.methods import gblend_fn, greedy_fn
from mmjax.models.mmtm import MMTM


# ----- G-Blend --------------------------------------------------------------------------------
def _linear_losses(params, batch, rng):
  """Two heads whose losses are linear in the parameters: ``CE_i = <w, mean_rows(x[:, i])> * c``.

  Head ``i``'s gradient is ``mean_rows(x[:, i]) * c`` with ``c = 1 + uniform(rng)`` (1 without a
  key), so the test can tell which key each batch got.
  """
  scale = 1.0 if rng is None else 1.0 + jax.random.uniform(rng)
  losses = jnp.stack([
      scale * (jnp.vdot(params['u'], batch[:, i, :2].mean(0)) + params['v'] * batch[:, i, 2].mean())
      for i in range(2)])
  return losses, {'rows': batch.shape[0]}


def test_per_head_statistics_hand_computed():
  rng = np.random.default_rng(0)
  first, second, heldout = (jnp.asarray(rng.normal(size=(n, 2, 3)), jnp.float32) for n in (4, 4, 6))
  params = {'u': jnp.array([0.3, -0.2]), 'v': jnp.float32(0.5)}
  keys = (None, jax.random.PRNGKey(1), jax.random.PRNGKey(2))
  stats = gblend_fn.per_head_statistics(_linear_losses, params, first, second, heldout, rngs=keys)
  scale = [1.0] + [1.0 + float(jax.random.uniform(k)) for k in keys[1:]]
  for i in range(2):
    g1, g2, gv = (np.asarray(b[:, i].mean(0), np.float64) * c
                  for b, c in zip((first, second, heldout), scale))
    g = (g1 + g2) / 2
    assert float(stats.generalization[i]) == pytest.approx(gv @ g, rel=1e-5)
    assert float(stats.overfitting[i]) == pytest.approx(g1 @ g2 - gv @ g, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(stats.grads['u'][i], g[:2], rtol=1e-5)
    np.testing.assert_allclose(stats.grads['v'][i], g[2], rtol=1e-5)
  assert stats.first_aux == {'rows': 4} and stats.second_aux == {'rows': 4}


def test_blend_head_gradients_probe_rule_by_hand():
  head_grads = {'encoder': jnp.array([[1.0, 2.0], [10.0, 20.0]]),
                'head_a': jnp.array([[3.0], [0.0]]), 'head_b': jnp.array([[0.0], [5.0]])}
  labels = {'encoder': 'branch/a', 'head_a': 'head/a', 'head_b': 'head/b'}
  weights = jnp.array([0.7, 0.0])  # head b is a probe
  blended = gblend_fn.blend_head_gradients(head_grads, weights, labels)
  np.testing.assert_allclose(blended['encoder'], [0.7, 1.4], rtol=1e-6)  # nothing from b
  np.testing.assert_allclose(blended['head_a'], [2.1], rtol=1e-6)
  np.testing.assert_allclose(blended['head_b'], [5.0], rtol=1e-6)  # the probe still learns
  plain = gblend_fn.blend_head_gradients(head_grads, jnp.array([0.25, 0.5]))
  np.testing.assert_allclose(plain['encoder'], [5.25, 10.5], rtol=1e-6)
  np.testing.assert_allclose(plain['head_b'], [2.5], rtol=1e-6)


def test_ema_and_weights_by_hand():
  g, o = jnp.array([1.0, 2.0, -1.0]), jnp.array([1.0, -2.0, 3.0])
  ema_g, ema_o2 = jnp.zeros(3), jnp.zeros(3)
  for _ in range(2):
    ema_g, ema_o2 = gblend_fn.ema_update(ema_g, ema_o2, g, o, decay=0.5)
  np.testing.assert_allclose(ema_g, [0.75, 1.5, -0.75])  # 0.5 * 0.5 x + 0.5 x
  np.testing.assert_allclose(ema_o2, [0.75, 3.0, 6.75])
  weights, delta_g, delta_o = gblend_fn.weights_from_ema(ema_g, ema_o2, 2, 0.5, 1e-3)
  np.testing.assert_allclose(delta_g, [1.0, 2.0, -1.0], rtol=1e-6)  # debiased by 1 - 0.25
  np.testing.assert_allclose(delta_o, [1.0, 2.0, 3.0], rtol=1e-6)
  # dG / dO^2 = 1, 0.5 and a head that did not generalise: weight 0.
  np.testing.assert_allclose(weights, [2 / 3, 1 / 3, 0.0], rtol=1e-6)


def _quadratic_estimation():
  """Two heads with one parameter each; SGD on ``(w_i - t_i)^2`` (half-step 0.5) moves only the
  trained head's parameter. T' targets ``[1, 2]``, V targets ``[0.5, 1]``."""
  train_targets, heldout_targets = jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0])

  def step(state, batch):
    w = state['w'] - 0.5 * state['one_hot'] * (state['w'] - batch)
    return {**state, 'w': w}

  def evaluate(state):
    return jnp.square(state['w'] - train_targets), jnp.square(state['w'] - heldout_targets)

  def single_head_copy(state, i):
    return {**state, 'one_hot': jax.nn.one_hot(i, 2)}

  state = {'w': jnp.zeros(2), 'one_hot': jnp.zeros(2)}
  return state, step, evaluate, single_head_copy, lambda: iter([train_targets] * 2)


def test_measure_deltas_by_hand_stacked_and_sequential():
  # Copy 0: w_0 = 0 -> 0.5 -> 0.75; copy 1: w_1 = 0 -> 1 -> 1.5.
  # Head 0: L^T 1 -> 1/16, L^V 1/4 -> 1/16: dG = 3/16, O = -3/4 -> 0, dO = 3/4.
  # Head 1: L^T 4 -> 1/4, L^V 1 -> 1/4: dG = 3/4, O = -3 -> 0, dO = 3.
  state, step, evaluate, single_head_copy, batches = _quadratic_estimation()
  runs = {
      'sequential': gblend_fn.measure_deltas(state, 2, single_head_copy=single_head_copy,
                                             train_step=jax.jit(step), evaluate=evaluate,
                                             batches=batches),
      'stacked': gblend_fn.measure_deltas(
          state, 2, single_head_copy=single_head_copy,
          train_step=jax.jit(jax.vmap(step, in_axes=(0, None))), evaluate=evaluate,
          batches=batches, stacked=True, evaluate_copies=jax.vmap(evaluate)),
  }
  for name, measured in runs.items():
    np.testing.assert_allclose(measured['train_before'], [1.0, 4.0], err_msg=name)
    np.testing.assert_allclose(measured['heldout_after'], [1 / 16, 1 / 4], err_msg=name)
    np.testing.assert_allclose(measured['delta_g'], [3 / 16, 3 / 4], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(measured['delta_o'], [3 / 4, 3.0], rtol=1e-6, err_msg=name)
  weights = gblend_fn.blend_weights(runs['stacked']['delta_g'], runs['stacked']['delta_o'], 1e-3)
  np.testing.assert_allclose(weights, [0.8, 0.2], rtol=1e-5)  # (1/3, 1/12) normalised
  with pytest.raises(ValueError, match='evaluate_copies'):
    gblend_fn.measure_deltas(state, 2, single_head_copy=single_head_copy, train_step=step,
                             evaluate=evaluate, batches=batches, stacked=True)


def test_measure_deltas_with_one_step_per_copy_reads_the_stream_once():
  """Copy ``i`` trained by its own step (``train_step[i]``, here the only parameter it moves)
  gives the by-hand numbers of the shared step; the batch stream is read once for all copies."""
  state, _, evaluate, single_head_copy, batches = _quadratic_estimation()
  reads = []

  def counted_batches():
    reads.append(1)
    return batches()

  def own_step(i):
    return jax.jit(lambda s, batch: {**s, 'w': s['w'].at[i].add(-0.5 * (s['w'][i] - batch[i]))})

  measured = gblend_fn.measure_deltas(
      state, 2, single_head_copy=single_head_copy, train_step=[own_step(0), own_step(1)],
      evaluate=evaluate, batches=counted_batches,
      evaluate_copy=lambda copy, i: tuple(v[i] for v in evaluate(copy)))
  assert len(reads) == 1
  np.testing.assert_allclose(measured['heldout_after'], [1 / 16, 1 / 4])
  np.testing.assert_allclose(measured['delta_g'], [3 / 16, 3 / 4], rtol=1e-6)
  np.testing.assert_allclose(measured['delta_o'], [3 / 4, 3.0], rtol=1e-6)
  with pytest.raises(ValueError, match='1 train steps for 2 heads'):
    gblend_fn.measure_deltas(state, 2, single_head_copy=single_head_copy,
                             train_step=[own_step(0)], evaluate=evaluate, batches=batches)


def test_gblend_functions_in_a_jitted_step_trace_once():
  traces = []

  @jax.jit
  def step(params, ema, weights, count, first, second, heldout):
    traces.append(1)
    stats = gblend_fn.per_head_statistics(_linear_losses, params, first, second, heldout)
    grads = gblend_fn.blend_head_gradients(stats.grads, weights)
    ema = gblend_fn.ema_update(*ema, stats.generalization, stats.overfitting, 0.9)
    new_weights, _, _ = gblend_fn.weights_from_ema(*ema, count, 0.9, 1e-3)
    return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), ema, new_weights

  params = {'u': jnp.array([0.3, -0.2]), 'v': jnp.float32(0.5)}
  ema, weights = (jnp.zeros(2), jnp.zeros(2)), jnp.array([0.5, 0.5])
  rng = np.random.default_rng(1)
  for count in range(1, 5):
    batches = (jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32) for _ in range(3))
    params, ema, weights = step(params, ema, weights, jnp.float32(count), *batches)
  assert len(traces) == 1 and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)


# ----- greedy learning ------------------------------------------------------------------------
MODALITIES = ('a', 'b')


def test_update_average_scales_and_speed_sums_by_hand():
  averages = {'a': (jnp.array([0.2, 0.4]),), 'b': (jnp.array([1.0]),)}
  scales = {'a': (jnp.array([[0.4, 0.0], [0.8, 0.2]]),), 'b': (jnp.array([[0.5], [0.5]]),)}
  new, n = greedy_fn.update_average_scales(averages, jnp.int32(1), scales, jnp.bool_(True))
  np.testing.assert_allclose(new['a'][0], [0.4, 0.25], rtol=1e-6)  # (0.2 + 0.6) / 2, (0.4 + 0.1) / 2
  np.testing.assert_allclose(new['b'][0], [0.75], rtol=1e-6)
  assert int(n) == 2
  same, n = greedy_fn.update_average_scales(averages, jnp.int32(1), scales, jnp.bool_(False))
  np.testing.assert_allclose(same['a'][0], [0.2, 0.4])
  assert int(n) == 1

  params = {'enc_a': jnp.array([3.0, 4.0]), 'enc_b': jnp.array([2.0]),
            'fuse': jnp.array([1.0]), 'fuse_a': jnp.array([0.0]), 'fuse_b': jnp.array([1.0])}
  grads = {'enc_a': jnp.array([0.0, 5.0]), 'enc_b': jnp.array([1.0]),
           'fuse': jnp.array([2.0]), 'fuse_a': jnp.array([1.0]), 'fuse_b': jnp.array([0.0])}
  labels = {'enc_a': 'branch/a', 'enc_b': 'branch/b', 'fuse': 'fusion', 'fuse_a': 'fusion/a',
            'fuse_b': 'fusion/b'}
  sums = greedy_fn.init_speed_sums(MODALITIES)
  sums = greedy_fn.accumulate_learning_speed(sums, params, grads, labels, MODALITIES)
  sums = greedy_fn.accumulate_learning_speed(sums, params, grads, labels, MODALITIES, normal=True)
  # mu_own: a 25/25, b 1/4; mu_fusion: a (4 + 1)/1, b 4/2; twice each.
  expected = {'own': {'a': 2.0, 'b': 0.5}, 'fusion': {'a': 10.0, 'b': 4.0}}
  for kind, values in expected.items():
    for m, value in values.items():
      assert float(sums[kind][m]) == pytest.approx(value, rel=1e-6), (kind, m)
  skipped = greedy_fn.accumulate_learning_speed(sums, params, grads, labels, MODALITIES,
                                                normal=jnp.bool_(False))
  assert jax.tree.map(float, skipped) == jax.tree.map(float, sums)
  speed = greedy_fn.conditional_learning_speed(sums['own'], sums['fusion'])
  assert float(speed['a']) == pytest.approx(np.log10(5.0))
  assert float(speed['b']) == pytest.approx(np.log10(8.0))


def test_guided_schedule_cases():
  normal = {'remaining': jnp.int32(0), 'branch': jnp.int32(0), 'other': 7}
  speeds = jnp.array([0.1, 0.5, 0.2])
  triggered = greedy_fn.guided_schedule(normal, speeds, jnp.int32(10), alpha=0.3, window=4,
                                        start_step=10)
  assert (int(triggered['remaining']), int(triggered['branch'])) == (4, 1)
  assert triggered['other'] == 7  # other keys pass through
  early = greedy_fn.guided_schedule(normal, speeds, jnp.int32(9), alpha=0.3, window=4, start_step=10)
  assert int(early['remaining']) == 0
  balanced = greedy_fn.guided_schedule(normal, speeds, jnp.int32(10), alpha=0.4, window=4,
                                       start_step=10)
  assert int(balanced['remaining']) == 0  # spread 0.4 is not above alpha
  counting = greedy_fn.guided_schedule(triggered, jnp.array([0.0, 0.0, 9.0]), jnp.int32(11),
                                       alpha=0.3, window=4, start_step=10)
  assert (int(counting['remaining']), int(counting['branch'])) == (3, 1)  # no trigger in a window
  flags = greedy_fn.rebalance_flags(counting, ('x', 'y', 'z'))
  assert [bool(flags[m]) for m in 'xyz'] == [False, True, False]


def test_random_schedule_draws_uniformly_after_the_start():
  schedule = {'remaining': jnp.int32(0), 'branch': jnp.int32(0)}
  draw = jax.jit(lambda key, step: greedy_fn.random_schedule(schedule, key, step, num_modalities=2,
                                                             start_step=5))
  keys = jax.random.split(jax.random.PRNGKey(0), 300)
  seen = [-1 if int(s['remaining']) == 0 else int(s['branch'])
          for s in (draw(k, jnp.int32(5)) for k in keys)]
  counts = np.bincount(np.asarray(seen) + 1, minlength=3)
  assert all(70 < c < 130 for c in counts), counts  # {normal, a, b}, 100 each expected
  assert all(int(draw(k, jnp.int32(4))['remaining']) == 0 for k in keys[:20])


def test_mmtm_sown_orders_modules_naturally():
  def sown(value):
    return {'scale_a': (jnp.full((1, 1), value),), 'scale_b': (jnp.full((1, 1), -value),)}

  intermediates = {'mmtm_10': sown(10.0), 'mmtm_2': sown(2.0), 'encoder': {'x': (1,)},
                   'block': {'MMTM_1': sown(1.5), 'MMTM_0': sown(0.5)}}
  out = greedy_fn.mmtm_sown(intermediates, MODALITIES, 'scale')
  assert [float(x[0, 0]) for x in out['a']] == [0.5, 1.5, 2.0, 10.0]
  assert [float(x[0, 0]) for x in out['b']] == [-0.5, -1.5, -2.0, -10.0]


def test_unimodal_accuracy_by_hand():
  def apply_fn(variables, inputs, *, unimodal, mean_squeeze, scale):
    # f'_a predicts class 0 everywhere; f'_b predicts row i's class from mean_squeeze and x.
    assert all(bool(f) for f in unimodal.values())
    rows = inputs['x'].shape[0]
    b_logits = scale * variables['w'] * (inputs['x'][:, None] - mean_squeeze['b'][0]) * jnp.array(
        [-1.0, 1.0])
    return {'a': jnp.tile(jnp.array([1.0, 0.0]), (rows, 1)), 'b': b_logits,
            'fused': jnp.zeros((rows, 2))}

  inputs = {'x': jnp.array([0.0, 1.0, 2.0, 3.0])}
  labels = jnp.array([0, 0, 1, 1])
  mean_squeeze = {'a': (jnp.zeros(1),), 'b': (jnp.array([0.5]),)}
  accuracy = greedy_fn.unimodal_accuracy(apply_fn, {'w': 1.0}, inputs, labels, mean_squeeze,
                                         MODALITIES, scale=2.0)
  # a: rows 0, 1 right of 4; b: x - 0.5 < 0 -> class 0 only for row 0: rows 0, 2, 3 right.
  assert float(accuracy['a']) == 0.5 and float(accuracy['b']) == 0.75
  masked = greedy_fn.unimodal_accuracy(apply_fn, {'w': 1.0}, inputs, labels, mean_squeeze,
                                       MODALITIES, mask=jnp.array([1, 1, 1, 0]), scale=2.0)
  assert float(masked['a']) == pytest.approx(2 / 3) and float(masked['b']) == pytest.approx(2 / 3)
  rates = greedy_fn.conditional_utilization_rate(0.8, {m: float(a) for m, a in accuracy.items()})
  assert rates['a'] == pytest.approx(0.375) and rates['b'] == pytest.approx(0.0625)


class TwoStageMMTMNet(nn.Module):
  """A user's own network: two Dense stages per modality, an MMTM after each, a head each."""

  @nn.compact
  def __call__(self, inputs, *, rebalance=None, average_scales=None, unimodal=None,
               mean_squeeze=None):
    x = dict(inputs)
    for j, width in enumerate((4, 3)):
      x = {m: nn.relu(nn.Dense(width, name=f'stage{j}_{m}')(x[m])) for m in MODALITIES}
      pick = lambda tree, j=j: None if tree is None else {m: tree[m][j] for m in MODALITIES}
      x = MMTM({m: width for m in MODALITIES}, name=f'mmtm_{j}')(
          x, rebalance=rebalance, average_scales=pick(average_scales), unimodal=unimodal,
          mean_squeeze=pick(mean_squeeze))
    return {m: nn.Dense(2, name=f'head_{m}')(x[m]) for m in MODALITIES}


def _labels(params):
  def label(path, _):
    top = path[0].key
    if top.startswith('mmtm_'):
      sub = path[1].key
      return 'fusion' if sub == 'squeeze' else 'fusion/' + sub.split('_')[-1]
    return ('head/' if top.startswith('head_') else 'branch/') + top.split('_')[-1]
  return jax.tree_util.tree_map_with_path(label, params)


def test_squeeze_sums_and_unimodal_outputs_on_a_users_network():
  model = TwoStageMMTMNet()
  rng = np.random.default_rng(2)
  inputs = {'a': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)}
  variables = model.init(jax.random.PRNGKey(0), inputs)
  mask = jnp.array([1, 1, 1, 1, 0])
  totals = greedy_fn.squeeze_sums(model.apply, variables, inputs, mask, MODALITIES)
  _, mutated = model.apply(variables, inputs, mutable=['intermediates'])
  assert float(totals['count']) == 4
  for j in range(2):
    for m in MODALITIES:
      squeezed = np.asarray(mutated['intermediates'][f'mmtm_{j}'][f'squeeze_{m}'][0])
      np.testing.assert_allclose(totals['sums'][m][j], squeezed[:4].sum(0), rtol=1e-5)
  # f'_a reads modality b only through b's mean squeezes: other b inputs leave head a of f'_a
  # unchanged (not so in f, where every MMTM of branch a sees b's own squeezes).
  means = jax.tree.map(lambda s: s / totals['count'], totals['sums'])
  other_b = {'a': inputs['a'], 'b': jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)}
  unimodal = greedy_fn.unimodal_outputs(model.apply, variables, inputs, means, MODALITIES)
  unimodal_other = greedy_fn.unimodal_outputs(model.apply, variables, other_b, means, MODALITIES)
  np.testing.assert_allclose(unimodal_other['a'], unimodal['a'], rtol=1e-6)
  assert not np.allclose(unimodal_other['b'], unimodal['b'], atol=1e-4)
  assert not np.allclose(model.apply(variables, other_b)['a'], model.apply(variables, inputs)['a'],
                         atol=1e-4)
  accuracy = {m: float((unimodal[m].argmax(-1) == 0).mean()) for m in MODALITIES}
  rates = greedy_fn.conditional_utilization_rate(0.8, accuracy)
  assert rates['a'] == pytest.approx((0.8 - accuracy['a']) / 0.8)


def test_balanced_learning_update_in_a_users_jitted_step_traces_once_and_rebalances():
  model = TwoStageMMTMNet()
  rng = np.random.default_rng(3)
  inputs = {'a': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)}
  labels_y = jnp.asarray(rng.integers(0, 2, size=8))
  params = model.init(jax.random.PRNGKey(0), inputs)['params']
  tx = optax.sgd(0.1)
  state = greedy_fn.init_balanced_state(MODALITIES, ({'a': 4, 'b': 4}, {'a': 3, 'b': 3}),
                                        jax.random.PRNGKey(1))
  traces = []

  @jax.jit
  def step(params, opt_state, method_state, index):
    traces.append(1)

    def loss_fn(p):
      outputs, mutated = model.apply(
          {'params': p}, inputs, rebalance=greedy_fn.rebalance_flags(method_state, MODALITIES),
          average_scales=method_state['average_scales'], mutable=['intermediates'])
      losses = [optax.softmax_cross_entropy_with_integer_labels(outputs[m], labels_y).mean()
                for m in MODALITIES]
      return sum(losses), mutated['intermediates']

    grads, intermediates = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    method_state = greedy_fn.balanced_learning_update(
        method_state, params=params, grads=grads, labels=_labels(params),
        intermediates=intermediates, step=index, modalities=MODALITIES, mode='guided', alpha=0.0,
        window=2, start_step=2)
    return optax.apply_updates(params, updates), opt_state, method_state, grads

  opt_state = tx.init(params)
  history = []
  for index in range(8):
    flags = {m: bool(f) for m, f in greedy_fn.rebalance_flags(state, MODALITIES).items()}
    params, opt_state, state, grads = step(params, opt_state, state, jnp.int32(index))
    history.append(flags)
    for m in MODALITIES:  # a re-balanced branch's excitation gets no gradient
      if flags[m]:
        assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(
            [grads[f'mmtm_{j}'][f'excite_{m}'] for j in range(2)]))
  assert len(traces) == 1
  assert not any(any(f.values()) for f in history[:3])  # steps 0..2 normal (trigger after step 2)
  assert all(any(f.values()) for f in history[3:5]) and not any(history[5].values())
  assert sum(int(c) for c in state['rebalance_steps'].values()) == sum(
      any(f.values()) for f in history)
  assert int(state['normal_steps']) == 8 - sum(any(f.values()) for f in history)
