"""OGM-GE: formulas against hand-computed values, the modulated step, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, sgd_synthetic_config, tiny_synthetic_config
from mmjax import metrics, train
from mmjax.methods import METHODS, ogm_ge


def test_registered():
  assert METHODS['ogm_ge'] is ogm_ge.OnTheFlyGradientModulation


def test_scores_sum_the_true_label_probability():
  # softmax([2, 0])[0] = e^2 / (e^2 + 1); softmax([0, 0])[1] = 1/2  (Eq. 8)
  logits = {'a': jnp.array([[2.0, 0.0], [0.0, 0.0]]), 'b': jnp.array([[0.0, 1.0], [3.0, 0.0]])}
  scores = ogm_ge.modality_scores(logits, jnp.array([0, 1]))
  assert float(scores['a']) == pytest.approx(math.e ** 2 / (math.e ** 2 + 1) + 0.5, rel=1e-6)
  assert float(scores['b']) == pytest.approx(1 / (1 + math.e) + 1 / (1 + math.e ** 3), rel=1e-6)


def test_discrepancy_ratios_two_and_three_modalities():
  two = ogm_ge.discrepancy_ratios({'a': jnp.float32(3.0), 'b': jnp.float32(1.5)})  # Eq. 9
  assert float(two['a']) == pytest.approx(2.0) and float(two['b']) == pytest.approx(0.5)
  three = ogm_ge.discrepancy_ratios(
      {'a': jnp.float32(3.0), 'b': jnp.float32(1.5), 'c': jnp.float32(1.0)})
  assert [float(three[m]) for m in 'abc'] == pytest.approx([3.0, 1.5, 1 / 1.5])
  underflow = ogm_ge.discrepancy_ratios({'a': jnp.float32(2.0), 'b': jnp.float32(0.0)})
  assert np.isfinite(float(underflow['a'])) and float(underflow['b']) < 1
  assert float(ogm_ge.modulation_coefficients(underflow, 0.1)['a']) == 0.0  # tanh saturates


def test_coefficients_equation_10_and_continuous_variant():
  ratios = {'a': jnp.float32(2.0), 'b': jnp.float32(0.5), 'c': jnp.float32(1.0)}
  paper = ogm_ge.modulation_coefficients(ratios, alpha=0.1)
  # 1 - tanh(0.2) = 1 - 0.19737532 = 0.80262468; k = 1 where rho <= 1
  assert [float(paper[m]) for m in 'abc'] == pytest.approx([0.80262468, 1.0, 1.0], rel=1e-6)
  assert float(ogm_ge.modulation_coefficients({'a': jnp.float32(1.0001)}, 0.8)['a']) == (
      pytest.approx(1 - math.tanh(0.8 * 1.0001), rel=1e-5))  # the jump at rho = 1
  continuous = ogm_ge.modulation_coefficients(ratios, alpha=0.1, rule='continuous')
  # 1 - tanh(0.1 * (2 - 1)) = 1 - 0.09966799 = 0.90033201
  assert [float(continuous[m]) for m in 'abc'] == pytest.approx([0.90033201, 1.0, 1.0], rel=1e-6)
  with pytest.raises(ValueError, match='valid rules'):
    ogm_ge.modulation_coefficients(ratios, 0.1, rule='linear')


def test_noise_scale_is_unbiased_tensor_std():
  # entries 1, 2, 3, 4: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / 3
  assert float(ogm_ge.noise_scale(jnp.array([[1.0, 2.0], [3.0, 4.0]]))) == pytest.approx(
      math.sqrt(5 / 3) + 1e-8, rel=1e-6)
  assert float(ogm_ge.noise_scale(jnp.array([7.0]))) == pytest.approx(1e-8)


def _tree():
  grads = {'encoders_a': {'kernel': jnp.arange(20000.0).reshape(100, 200) / 1000.0},
           'encoders_b': {'kernel': jnp.array([[1.0, 2.0], [3.0, 4.0]]), 'conv': jnp.ones((1, 1, 2, 3))},
           'head_fused': {'kernel': jnp.ones((3, 2))}}
  labels = {'encoders_a': {'kernel': 'branch/a'},
            'encoders_b': {'kernel': 'branch/b', 'conv': 'branch/b'},
            'head_fused': {'kernel': 'head/fused'}}
  return grads, labels


def test_modulated_leaves_paper_and_official_selection():
  grads, labels = _tree()
  assert ogm_ge.modulated_leaves(labels, grads, ('a', 'b'), 'encoder') == {
      'encoders_a': {'kernel': 'a'}, 'encoders_b': {'kernel': 'b', 'conv': 'b'},
      'head_fused': {'kernel': ''}}
  assert ogm_ge.modulated_leaves(labels, grads, ('a', 'b'), 'conv_kernels') == {
      'encoders_a': {'kernel': ''}, 'encoders_b': {'kernel': '', 'conv': 'b'},
      'head_fused': {'kernel': ''}}


def test_modulation_scales_encoders_and_adds_unscaled_noise():
  grads, labels = _tree()
  owners = ogm_ge.modulated_leaves(labels, grads, ('a', 'b'), 'encoder')
  coefficients = {'a': jnp.float32(0.5), 'b': jnp.float32(1.0)}
  key = jax.random.PRNGKey(3)
  plain = ogm_ge.modulate_gradients(grads, owners, coefficients, key)
  np.testing.assert_allclose(plain['encoders_a']['kernel'], 0.5 * grads['encoders_a']['kernel'])
  np.testing.assert_array_equal(plain['encoders_b']['kernel'], grads['encoders_b']['kernel'])
  np.testing.assert_array_equal(plain['head_fused']['kernel'], grads['head_fused']['kernel'])
  noisy = ogm_ge.modulate_gradients(grads, owners, coefficients, key,
                                    jax.tree.map(ogm_ge.noise_scale, grads))
  residual = np.asarray(noisy['encoders_a']['kernel'] - 0.5 * grads['encoders_a']['kernel'])
  # sigma = std of the gradient's 20000 entries (0, 0.001, ..., 19.999), before scaling by k:
  # sqrt((n^2 - 1) / 12 * n / (n - 1)) * 0.001 for n = 20000
  sigma = math.sqrt((20000 ** 2 - 1) / 12 * 20000 / 19999) * 0.001
  assert residual.std() == pytest.approx(sigma, rel=0.03)
  assert abs(residual.mean()) < 4 * sigma / math.sqrt(20000)
  # noise on the encoder with k = 1 too, of scale std(1, 2, 3, 4) = sqrt(5 / 3)
  residual_b = np.asarray(noisy['encoders_b']['kernel'] - grads['encoders_b']['kernel'])
  assert 0 < np.abs(residual_b).max() < 6 * math.sqrt(5 / 3)
  np.testing.assert_array_equal(noisy['head_fused']['kernel'], grads['head_fused']['kernel'])
  off = ogm_ge.modulate_gradients(grads, owners, coefficients, key,
                                  jax.tree.map(ogm_ge.noise_scale, grads), active=jnp.bool_(False))
  for a, b in zip(jax.tree.leaves(off), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(a, b)


def test_minibatch_gradient_variance_from_chunks():
  # chunk gradients 1, 2, 4, 5: mean 3, squared deviations 4 + 1 + 1 + 4 = 10; / (C - 1) / C
  chunk_grads = {'w': jnp.array([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [5.0, 0.0]])}
  variance = ogm_ge.minibatch_gradient_variance(chunk_grads)['w']
  np.testing.assert_allclose(variance, [10 / 3 / 4, 0.0], rtol=1e-6)


def test_sgd_diagonal_noise_has_the_chunk_variance():
  """noise='sgd_diagonal' with k = 1 (alpha = 0): each encoder entry's noise has the standard
  deviation estimated from the batch's chunks, recomputed here from per-chunk gradients."""
  trainer = train.Trainer(_sgd_config(noise='sgd_diagonal', alpha=0.0))
  vanilla_config = _sgd_config()
  vanilla_config.method = {'name': 'vanilla'}
  vanilla = train.Trainer(vanilla_config)
  state, batch = trainer.init_state(), trainer.next_batch()
  chunk_grads = []
  for c in range(4):
    chunk = jax.tree.map(lambda x, c=c: x[c * 8:(c + 1) * 8], batch)
    new, _ = vanilla.jit_train_step(vanilla.init_state(), chunk)
    chunk_grads.append(jax.tree.map(lambda p0, p1: (p0 - p1) / 0.1, state.params, new.params))
  chunk_grads = [g['encoders_a'] for g in chunk_grads]
  std = jax.tree.map(lambda *g: np.std(np.stack(g), axis=0, ddof=1) / 2, *chunk_grads)
  new_ogm, _ = trainer.jit_train_step(state, batch)
  new_vanilla, _ = vanilla.jit_train_step(vanilla.init_state(), batch)
  noise = jax.tree.map(lambda a, b: (b - a) / 0.1, new_ogm.params['encoders_a'],
                       new_vanilla.params['encoders_a'])
  z = np.concatenate([np.ravel(n / s) for n, s in zip(jax.tree.leaves(noise), jax.tree.leaves(std))
                      if np.all(s > 1e-6)])
  assert z.size > 500 and np.std(z) == pytest.approx(1.0, rel=0.1) and abs(np.mean(z)) < 0.1


def test_window_is_inclusive_and_zero_based():
  assert [bool(ogm_ge.in_window(e, 0, 50)) for e in (0, 50, 51)] == [True, True, False]
  assert [bool(ogm_ge.in_window(e, 2, 3)) for e in (1, 2, 3, 4)] == [False, True, True, False]


def _sgd_config(**method_options):
  return sgd_synthetic_config('ogm_ge', **method_options)


def test_fused_parts_sum_to_fused_logits():
  trainer = train.Trainer(_sgd_config())
  state = trainer.init_state()
  batch = trainer.next_batch()
  variables = {'params': state.params, **state.model_state}
  outputs, sown = trainer.model.apply(variables, batch['inputs'], train=False,
                                      decompose_fused=True, mutable=['intermediates'])
  parts = sown['intermediates']['fused_parts'][0]
  np.testing.assert_allclose(parts['a'] + parts['b'], outputs['fused'], rtol=1e-5, atol=1e-5)
  # W_a f_a + b / 2 with f_a from the encoder alone
  features_a = trainer.model.apply(variables, batch['inputs']['a'],
                                   method=lambda model, x: model.encoders['a'](x, train=False))
  head = state.params['head_fused']
  expected_a = features_a @ head['kernel'][:features_a.shape[-1]] + head['bias'] / 2
  np.testing.assert_allclose(parts['a'], expected_a, rtol=1e-5, atol=1e-5)


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_step_scales_each_encoder_update_by_its_coefficient():
  """SGD without momentum: the OGM step's update of encoder m is k_m times vanilla's, with k_m
  computed here from the fused head's per-modality shares (Eqs. 8-10); the heads' are equal."""
  ogm = train.Trainer(_sgd_config(noise='none', alpha=0.8))
  vanilla_config = _sgd_config()
  vanilla_config.method = {'name': 'vanilla'}
  vanilla = train.Trainer(vanilla_config)
  state_ogm, state_vanilla = ogm.init_state(), vanilla.init_state()
  batch = ogm.next_batch()
  variables = {'params': state_ogm.params, **state_ogm.model_state}
  _, sown = ogm.model.apply(variables, batch['inputs'], train=True, decompose_fused=True,
                            mutable=['intermediates', *state_ogm.model_state])
  parts = jax.device_get(sown['intermediates']['fused_parts'][0])
  labels = np.asarray(batch['label'])
  scores = {m: _softmax(np.asarray(parts[m], np.float64))[np.arange(len(labels)), labels].sum()
            for m in 'ab'}
  ratio = {'a': scores['a'] / scores['b'], 'b': scores['b'] / scores['a']}
  k = {m: 1 - math.tanh(0.8 * r) if r > 1 else 1.0 for m, r in ratio.items()}
  assert min(k.values()) < 1
  new_ogm, step_metrics = ogm.jit_train_step(state_ogm, batch)
  new_vanilla, _ = vanilla.jit_train_step(state_vanilla, batch)
  assert float(step_metrics['ogm_ge/ratio/a']) == pytest.approx(ratio['a'], rel=1e-4)
  for top in state_ogm.params:
    scale = k[top[-1]] if top.startswith('encoders_') else 1.0
    for p0, p1, q1 in zip(jax.tree.leaves(state_ogm.params[top]),
                          jax.tree.leaves(new_ogm.params[top]),
                          jax.tree.leaves(new_vanilla.params[top])):
      np.testing.assert_allclose(np.asarray(p1 - p0), scale * np.asarray(q1 - p0),
                                 rtol=1e-4, atol=1e-7)


def test_leaving_the_window_never_recompiles(tmp_path):
  """Epoch 0 modulates, epoch 1 does not (modulation_ends=0); the step compiles once."""
  trainer = train.Trainer(_sgd_config(modulation_ends=0))
  state = trainer.init_state()
  flags = []
  for _ in range(trainer.steps_per_epoch + 2):
    flags.append(bool(state.method_state['modulating']))
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
  assert flags == [True] * trainer.steps_per_epoch + [False] * 2
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('ogm_ge', modulation_ends=0)
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  assert [r['ogm_ge/modulating'] for r in records] == [1.0, 0.0]
  for r in records:
    assert 0 < r['ogm_ge/coefficient/a'] <= 1 and 0 < r['ogm_ge/coefficient/b'] <= 1
    assert np.isfinite(r['ogm_ge/ratio/a'])
  summary = metrics.read_summary(full)
  assert summary['method'] == 'ogm_ge' and summary['finished']


def test_unimodal_head_scores_and_setup_refusals():
  trainer = train.Trainer(tiny_synthetic_config('ogm_ge', score='unimodal_heads'))
  state, step_metrics = trainer.jit_train_step(trainer.init_state(), trainer.next_batch())
  assert np.isfinite(float(step_metrics['ogm_ge/coefficient/a'])) and int(state.step) == 1
  hidden = tiny_synthetic_config('ogm_ge')
  hidden.model.fused_hidden = (8,)
  with pytest.raises(ValueError, match="method.score = 'unimodal_heads'"):
    train.Trainer(hidden)
  with pytest.raises(ValueError, match="'conv_kernels' needs convolutional encoders"):
    train.Trainer(tiny_synthetic_config('ogm_ge', modulated_parameters='conv_kernels'))
  for options, match in (({'alpha': -1.0}, 'method.alpha'),
                         ({'modulation_starts': 3, 'modulation_ends': 2}, 'is before'),
                         ({'noise': 'gaussian'}, 'method.noise'),
                         ({'noise': 'sgd_diagonal', 'noise_chunks': 5}, 'not a multiple')):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('ogm_ge', **options))
