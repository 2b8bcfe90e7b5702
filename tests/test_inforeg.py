"""InfoReg: formulas against hand-computed values, the regulated step, window, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, sgd_synthetic_config, tiny_synthetic_config
from mmjax import metrics, train
from mmjax.methods import METHODS, inforeg


def test_registered():
  assert METHODS['inforeg'] is inforeg.InformationAcquisitionRegulation


def test_regulation_coefficient_only_for_the_leading_modality():
  # 0.95 exp(tanh(10)) = 0.95 * exp(0.99999999587) = 0.95 * 2.71828181 = 2.58236772
  two = inforeg.regulation_coefficients({'a': jnp.float32(40.0), 'b': jnp.float32(30.0)}, 0.95)
  assert float(two['a']) == pytest.approx(2.58236772, rel=1e-6) and float(two['b']) == 0.0
  # gap 0.5: tanh(0.5) = 0.46211716, exp(0.46211716) = 1.5874313, * 0.95 = 1.5080597
  three = inforeg.regulation_coefficients(
      {'a': jnp.float32(1.0), 'b': jnp.float32(1.5), 'c': jnp.float32(1.0)}, 0.95)
  assert [float(three[m]) for m in 'abc'] == pytest.approx([0.0, 1.5080597, 0.0], rel=1e-6)
  tie = inforeg.regulation_coefficients({'a': jnp.float32(2.0), 'b': jnp.float32(2.0)}, 0.95)
  assert float(tie['a']) == float(tie['b']) == 0.0
  with pytest.raises(ValueError, match='two or more modalities'):
    inforeg.regulation_coefficients({'a': jnp.float32(1.0)}, 0.95)


def test_window_statistic_is_the_relative_growth_of_the_trace():
  # W = 2, traces 1, 3, 4 of epochs 0-2: (4 - 1) / (3 + 4) = 3/7
  assert float(inforeg.window_statistic(jnp.array([1.0, 3.0, 4.0]))) == pytest.approx(3 / 7)
  # the official code's list of ten zeros then epoch 0's trace: (5 - 0) / 5 = 1
  assert float(inforeg.window_statistic(jnp.array([0.0] * 10 + [5.0]))) == pytest.approx(1.0)
  # shrinking information: (2 - 6) / (4 + 2) < 0
  assert float(inforeg.window_statistic(jnp.array([6.0, 4.0, 2.0]))) == pytest.approx(-4 / 6)
  assert float(inforeg.window_statistic(jnp.zeros(3))) == 0.0


def _tree():
  grads = {'encoders_a': {'conv': {'kernel': jnp.full((1, 1, 2, 2), 2.0), 'bias': jnp.ones(2)},
                          'dense': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]])}},
           'encoders_b': {'dense': {'kernel': jnp.array([[0.0, 1.0]])}},
           'head_fused': {'kernel': jnp.full((2, 2), 9.0)}}
  owners = {'encoders_a': {'conv': {'kernel': 'a', 'bias': 'a'}, 'dense': {'kernel': 'a'}},
            'encoders_b': {'dense': {'kernel': 'b'}}, 'head_fused': {'kernel': ''}}
  return grads, owners


def test_fisher_trace_sums_the_mean_squared_kernel_gradients():
  grads, owners = _tree()
  trace = inforeg.fisher_trace(grads, owners, ('a', 'b'))
  # a: conv kernel mean(4) = 4, dense kernel (1 + 4 + 9 + 16) / 4 = 7.5, biases left out
  assert float(trace['a']) == pytest.approx(11.5)
  assert float(trace['b']) == pytest.approx(0.5)  # (0 + 1) / 2; the fused head is no encoder


def test_proximal_term_pulls_only_the_regulated_encoder():
  grads, owners = _tree()
  params = jax.tree.map(lambda g: g + 1.0, grads)
  anchor = jax.tree.map(lambda g: g - 1.0, grads)  # theta - theta_t = 2 everywhere
  out = inforeg.add_proximal_term(grads, params, anchor, owners,
                                  {'a': jnp.float32(0.5), 'b': jnp.float32(0.0)})
  np.testing.assert_allclose(out['encoders_a']['dense']['kernel'], [[2.0, 3.0], [4.0, 5.0]])
  np.testing.assert_allclose(out['encoders_a']['conv']['bias'], [2.0, 2.0])
  np.testing.assert_array_equal(out['encoders_b']['dense']['kernel'], [[0.0, 1.0]])
  np.testing.assert_array_equal(out['head_fused']['kernel'], grads['head_fused']['kernel'])


def _sgd_config(**method_options):
  return sgd_synthetic_config('inforeg', **method_options)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_second_step_adds_the_pull_to_the_epoch_start_parameters():
  """SGD without momentum. Step 2's update of each encoder is ``-lr (g + beta^u (theta_1 -
  theta_0))``, with ``g`` the gradient of fused + share cross-entropies computed here by
  ``jax.grad`` of the model and ``beta^u`` from the shares' scores in numpy."""
  trainer = train.Trainer(_sgd_config())
  state0 = trainer.init_state()
  state1, first = trainer.jit_train_step(state0, trainer.next_batch())
  assert float(first['inforeg/beta/a']) == float(first['inforeg/beta/b']) == 0.0  # theta = theta_0
  batch = trainer.next_batch()
  labels = np.asarray(batch['label'])

  def total_loss(params):
    outputs, sown = trainer.model.apply(
        {'params': params, **state1.model_state}, batch['inputs'], train=True,
        decompose_fused=True, mutable=['intermediates', *state1.model_state])
    parts = sown['intermediates']['fused_parts'][0]

    def ce(logits):
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])
    return ce(outputs['fused']) + ce(parts['a']) + ce(parts['b']), parts

  grads, parts = jax.grad(total_loss, has_aux=True)(state1.params)
  scores = {m: _softmax(np.asarray(parts[m], np.float64))[np.arange(len(labels)), labels].sum()
            for m in 'ab'}
  lead = max(scores, key=scores.get)
  other = 'b' if lead == 'a' else 'a'
  beta = {lead: 0.95 * math.exp(math.tanh(scores[lead] - scores[other])), other: 0.0}
  state2, second = trainer.jit_train_step(state1, batch)
  assert float(second[f'inforeg/beta/{lead}']) == pytest.approx(beta[lead], rel=1e-4)
  assert float(second[f'inforeg/beta/{other}']) == 0.0
  for top in ('encoders_a', 'encoders_b'):
    m = top[-1]
    for p0, p1, p2, g in zip(*(jax.tree.leaves(t[top]) for t in (
        state0.params, state1.params, state2.params, grads))):
      expected = -0.1 * (np.asarray(g) + beta[m] * (np.asarray(p1) - np.asarray(p0)))
      np.testing.assert_allclose(np.asarray(p2 - p1), expected, rtol=2e-4, atol=1e-7)
  # the fused head gets the three losses' gradients, no pull
  for p1, p2, g in zip(*(jax.tree.leaves(t['head_fused']) for t in (
      state1.params, state2.params, grads))):
    np.testing.assert_allclose(np.asarray(p2 - p1), -0.1 * np.asarray(g), rtol=2e-4, atol=1e-7)


def test_window_closes_with_the_trace_and_never_recompiles():
  """tau = 0.99, W = 10: epochs 0 (kappa = 1) and 1 (kappa = T0 / T0 = 1) regulate, epoch 2
  (kappa = T1 / (T0 + T1) < 1) does not; each epoch's anchor is its starting parameters."""
  trainer = train.Trainer(_sgd_config(window_threshold=0.99))
  state = trainer.init_state()
  per_epoch = trainer.steps_per_epoch
  flags, traces = [], []
  for step in range(3 * per_epoch):
    if step % per_epoch == 0 and step:
      for a, p in zip(jax.tree.leaves(state.method_state['anchor']), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, p)
    flags.append(bool(state.method_state['regulating']))
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
    if (step + 1) % per_epoch == 0:
      traces.append(np.asarray(state.method_state['trace_history']['a'][-1]))
  assert flags == [True] * (2 * per_epoch) + [False] * per_epoch
  history = {m: np.asarray(h) for m, h in state.method_state['trace_history'].items()}
  largest = np.maximum(history['a'], history['b'])
  assert float(state.method_state['window_statistic']) == pytest.approx(
      (largest[-1] - largest[0]) / largest[1:].sum(), rel=1e-5)
  np.testing.assert_allclose(history['a'][-3:], traces, rtol=1e-6)
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('inforeg')
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  assert [r['inforeg/regulating'] for r in records] == [1.0, 1.0]
  for r in records:
    assert r['inforeg/trace/a'] > 0 and r['inforeg/trace/b'] > 0
    assert r['inforeg/beta/a'] >= 0 and np.isfinite(r['inforeg/unimodal_loss/b'])
  summary = metrics.read_summary(full)
  assert summary['method'] == 'inforeg' and summary['finished']


def test_refusals():
  hidden = tiny_synthetic_config('inforeg')
  hidden.model.fused_hidden = (8,)
  with pytest.raises(ValueError, match='linear fused head'):
    train.Trainer(hidden)
  for options, match in (({'beta': -1.0}, 'method.beta'),
                         ({'window_epochs': 0}, 'method.window_epochs'),
                         ({'window_trace': 'c'}, r"valid choices are \['largest', 'a', 'b'\]")):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('inforeg', **options))
