"""AGM: formulas against hand-computed values, the modulated step, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ROOT, assert_resume_is_bit_identical, sgd_synthetic_config,
                      tiny_synthetic_config)
from mmjax import main, metrics, train
from mmjax.methods import METHODS, agm
from test_user_model import SumOfHeads


def test_registered():
  assert METHODS['agm'] is agm.AdaptiveGradientModulation


def test_coalitions_and_shapley_weights():
  assert agm.coalitions(('a', 'b')) == (frozenset('a'), frozenset('b'), frozenset('ab'))
  assert len(agm.coalitions(('a', 'b', 'c'))) == 7
  # M = 2: 0! 1! / 2! = 1/2 and 1! 0! / 2! = 1/2; M = 3: 0! 2! / 3! = 1/3, 1! 1! / 3! = 1/6
  assert [agm.shapley_weight(s, 2) for s in (0, 1)] == pytest.approx([0.5, 0.5])
  assert [agm.shapley_weight(s, 3) for s in (0, 1, 2)] == pytest.approx([1 / 3, 1 / 6, 1 / 3])


def test_two_modality_responses_are_the_official_half_sums():
  # f(a,v) = [1, 2], f(a,0) = [0.5, -1], f(0,v) = [3, 0]
  # m_a = (f(a,v) - f(0,v) + f(a,0)) / 2 = [-1.5, 1] / 2; m_v = (f(a,v) - f(a,0) + f(0,v)) / 2
  logits = {frozenset('av'): jnp.array([1.0, 2.0]), frozenset('a'): jnp.array([0.5, -1.0]),
            frozenset('v'): jnp.array([3.0, 0.0])}
  responses = agm.mono_modal_responses(logits, ('a', 'v'))
  np.testing.assert_allclose(responses['a'], [-0.75, 0.5])
  np.testing.assert_allclose(responses['v'], [1.75, 1.5])


def test_three_modality_responses_match_the_official_urfunny_forms():
  rng = np.random.default_rng(0)
  f = {s: rng.normal(size=(4, 3)) for s in ('avt', 'vt', 'at', 'av', 'a', 'v', 't')}
  # model/URFunny_net.py, with pad_X_out = f(the other two) and pad_XY_out = f(the third one)
  official = {
      'a': (f['avt'] - f['vt'] + f['a']) / 3 + (f['at'] - f['v'] + f['av'] - f['t']) / 6,
      'v': (f['avt'] - f['at'] + f['v']) / 3 + (f['vt'] - f['a'] + f['av'] - f['t']) / 6,
      't': (f['avt'] - f['av'] + f['t']) / 3 + (f['at'] - f['v'] + f['vt'] - f['a']) / 6,
  }
  responses = agm.mono_modal_responses(
      {frozenset(s): jnp.asarray(x, jnp.float32) for s, x in f.items()}, ('a', 'v', 't'))
  for m in 'avt':
    np.testing.assert_allclose(responses[m], official[m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sum(responses.values()), f['avt'], rtol=1e-5, atol=1e-6)


def test_scores_are_mean_losses_with_the_official_floor():
  # -log(e^2 / (e^2 + 1)) = log(1 + e^-2) = 0.126928; -log(1/2) = 0.693147; mean 0.410038
  scores = agm.response_scores({'a': jnp.array([[2.0, 0.0], [0.0, 0.0]])}, jnp.array([0, 1]))
  assert float(scores['a']) == pytest.approx(0.410038, rel=1e-5)
  # p = 1 / (1 + e^30) < 1e-8: the score is -log(1e-8) = 18.420681
  floored = agm.response_scores({'a': jnp.array([[0.0, 30.0]])}, jnp.array([0]))
  assert float(floored['a']) == pytest.approx(18.420681, rel=1e-6)


def test_ratios_two_and_three_modalities():
  two = agm.response_ratios({'a': jnp.float32(1.0), 'v': jnp.float32(1.5)})
  # r_a = exp(s_v - s_a) = exp(0.5) = 1.648721, r_v = exp(-0.5) = 0.606531
  assert [float(two[m]) for m in 'av'] == pytest.approx([1.648721, 0.606531], rel=1e-6)
  three = agm.response_ratios({'a': jnp.float32(1.0), 'v': jnp.float32(2.0), 't': jnp.float32(3.0)})
  # mean 2, M / (M - 1) = 1.5: exp(1.5), exp(0), exp(-1.5)
  assert [float(three[m]) for m in 'avt'] == pytest.approx([4.481689, 1.0, 0.223130], rel=1e-6)


def test_running_means_and_coefficients():
  # S(3) = 0.5 * 2/3 + 1.1 / 3 = 0.7; at t = 1 the mean is the score
  means = agm.update_running_means({'a': jnp.float32(0.5)}, {'a': jnp.float32(1.1)}, 3)
  assert float(means['a']) == pytest.approx(0.7, rel=1e-6)
  assert float(agm.update_running_means({'a': jnp.float32(9.0)}, {'a': jnp.float32(1.1)}, 1)['a']) == (
      pytest.approx(1.1))
  # exp(1.0 * (1.2 - 1.0)) = 1.221403; capped: exp(0.5 * min(13 - 1, 10)) = exp(5) = 148.413159
  k = agm.modulation_coefficients({'a': jnp.float32(1.0), 'v': jnp.float32(1.0)},
                                  {'a': jnp.float32(1.2), 'v': jnp.float32(0.5)}, 1.0, 10.0)
  assert [float(k[m]) for m in 'av'] == pytest.approx([1.221403, math.exp(-0.5)], rel=1e-6)
  capped = agm.modulation_coefficients({'a': jnp.float32(1.0)}, {'a': jnp.float32(13.0)}, 0.5, 10.0)
  assert float(capped['a']) == pytest.approx(148.413159, rel=1e-6)


def test_clipping_fires_on_the_fused_weight_and_scales_by_the_global_norm():
  labels = {'head_fused': {'kernel': 'head/fused', 'bias': 'head/fused'},
            'encoders_a': {'kernel': 'branch/a'}}
  grads = {'head_fused': {'kernel': jnp.array([[2.0, 0.0]]), 'bias': jnp.array([0.0])},
           'encoders_a': {'kernel': jnp.array([[3.0]])}}
  watched = agm.clip_leaves(labels, grads)
  assert watched == {'head_fused': {'kernel': True, 'bias': False}, 'encoders_a': {'kernel': False}}
  clipped, fired = agm.clip_gradients(grads, watched, 1.0)
  factor = 1.0 / (math.sqrt(4.0 + 9.0) + 1e-6)  # global norm sqrt(13)
  assert bool(fired)
  np.testing.assert_allclose(clipped['encoders_a']['kernel'], [[3.0 * factor]], rtol=1e-6)
  small = {'head_fused': {'kernel': jnp.array([[0.5, -1.0]]), 'bias': jnp.array([7.0])},
           'encoders_a': {'kernel': jnp.array([[30.0]])}}
  unchanged, fired = agm.clip_gradients(small, watched, 1.0)
  assert not bool(fired)
  np.testing.assert_array_equal(unchanged['encoders_a']['kernel'], [[30.0]])
  # a model without a fused head (MMTM): every head kernel is watched
  mmtm = {'head_a': {'kernel': 'head/a', 'bias': 'head/a'}, 'encoders_a': {'kernel': 'branch/a'}}
  params = {'head_a': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)},
            'encoders_a': {'kernel': jnp.ones((2, 2))}}
  assert agm.clip_leaves(mmtm, params) == {'head_a': {'kernel': True, 'bias': False},
                                           'encoders_a': {'kernel': False}}


def _sgd_config(model='late_fusion', **method_options):
  return sgd_synthetic_config('agm', learning_rate=1.0, model=model, **method_options)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('model', ['late_fusion', 'mmtm'])
def test_step_gradient_is_the_coalition_sum_with_hand_computed_coefficients(model):
  """Two steps (the second has running means): the update of every encoder and fused-path
  parameter equals ``-sum_S c_S J_S^T g``, with ``g`` the fused loss's logit gradient, ``J_S``
  the Jacobian of the pass ``f(S)`` and ``c_{av} = (k_a + k_v)/2``, ``c_a = (k_a - k_v)/2``,
  ``c_v = (k_v - k_a)/2``, the ``k`` computed here in numpy from the passes' logits."""
  trainer = train.Trainer(_sgd_config(model, grad_clip=0.0, alpha=2.0))
  state = trainer.init_state()
  state, _ = trainer.jit_train_step(state, trainer.next_batch())
  means = {m: float(v) for m, v in state.method_state['score_means'].items()}
  batch = trainer.next_batch()
  labels = np.asarray(batch['label'])
  model_def = trainer.model
  kwargs = trainer.method.model_kwargs(state.method_state, None)

  def full(p):  # the training pass, with the batch statistics it updates
    out, mutated = model_def.apply({'params': p, **state.model_state}, batch['inputs'], train=True,
                                   mutable=list(state.model_state), **kwargs)
    return out['fused'], mutated

  full_logits, new_model_state = full(state.params)
  passes = {'ab': lambda p: full(p)[0]}
  for keep in ('a', 'b'):
    inputs = {m: x if m == keep else jnp.zeros_like(x) for m, x in batch['inputs'].items()}
    passes[keep] = (lambda p, inputs=inputs: model_def.apply(
        {'params': p, **new_model_state}, inputs, train=False)['fused'])
  logits = {s: np.asarray(jax.jit(f)(state.params), np.float64) for s, f in passes.items()}
  responses = {'a': (logits['ab'] - logits['b'] + logits['a']) / 2,
               'b': (logits['ab'] - logits['a'] + logits['b']) / 2}
  rows = np.arange(len(labels))
  scores = {m: -np.maximum(_log_softmax(z)[rows, labels], math.log(1e-8)).mean()
            for m, z in responses.items()}
  ratio = {'a': math.exp(scores['b'] - scores['a']), 'b': math.exp(scores['a'] - scores['b'])}
  reference = {'a': math.exp(means['b'] - means['a']), 'b': math.exp(means['a'] - means['b'])}
  k = {m: math.exp(2.0 * min(reference[m] - ratio[m], 10.0)) for m in 'ab'}
  assert abs(k['a'] - 1) > 1e-3
  probs = np.exp(_log_softmax(logits['ab']))
  g = (probs - np.eye(probs.shape[1])[labels]) / len(labels)
  coefficient = {'ab': (k['a'] + k['b']) / 2, 'a': (k['a'] - k['b']) / 2, 'b': (k['b'] - k['a']) / 2}
  expected = None
  for s, f in passes.items():
    pullback = jax.jit(lambda p, cotangent, f=f: jax.vjp(f, p)[1](cotangent)[0])
    term = jax.tree.map(lambda x, c=coefficient[s]: c * np.asarray(x, np.float64),
                        pullback(state.params, jnp.asarray(g, jnp.float32)))
    expected = term if expected is None else jax.tree.map(np.add, expected, term)
  new_state, step_metrics = trainer.jit_train_step(state, batch)
  assert float(step_metrics['agm/coefficient/a']) == pytest.approx(k['a'], rel=1e-4)
  assert float(step_metrics['agm/reference_ratio/b']) == pytest.approx(reference['b'], rel=1e-4)
  compared = 0
  for top in state.params:
    if model == 'late_fusion' and top in ('head_a', 'head_b'):
      continue  # probes: trained on their own losses
    for p0, p1, e in zip(jax.tree.leaves(state.params[top]), jax.tree.leaves(new_state.params[top]),
                         jax.tree.leaves(expected[top])):
      np.testing.assert_allclose(np.asarray(p0 - p1), e, rtol=2e-3, atol=1e-6)
      compared += 1
  assert compared >= 6


def test_leaving_the_window_never_recompiles():
  """Epoch 0 modulates, epoch 1 does not (modulation_ends=0); the running means move every
  step; the step compiles once."""
  trainer = train.Trainer(_sgd_config(modulation_ends=0))
  state = trainer.init_state()
  flags, means = [], []
  for _ in range(trainer.steps_per_epoch + 2):
    flags.append(bool(state.method_state['modulating']))
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    means.append(float(state.method_state['score_means']['a']))
  assert flags == [True] * trainer.steps_per_epoch + [False] * 2
  assert len(set(means)) == len(means)
  assert float(step_metrics['agm/modulating']) == 0.0
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_outside_the_window_the_step_is_vanillas():
  """With modulation off (starts after the run) and no clipping, AGM's update equals vanilla's:
  the responses sum to the fused logits."""
  agm_trainer = train.Trainer(_sgd_config(modulation_starts=5, modulation_ends=5, grad_clip=0.0))
  vanilla_config = _sgd_config()
  vanilla_config.method = {'name': 'vanilla'}
  vanilla = train.Trainer(vanilla_config)
  batch = agm_trainer.next_batch()
  new_agm, _ = agm_trainer.jit_train_step(agm_trainer.init_state(), batch)
  new_vanilla, _ = vanilla.jit_train_step(vanilla.init_state(), batch)
  for a, b in zip(jax.tree.leaves(new_agm.params), jax.tree.leaves(new_vanilla.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('agm', modulation_ends=0)
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  assert [r['agm/modulating'] for r in records] == [1.0, 0.0]
  for r in records:
    assert r['agm/coefficient/a'] > 0 and np.isfinite(r['agm/ratio/b'])
    assert r['agm/score/a'] > 0 and 0 <= r['agm/clipped'] <= 1
  summary = metrics.read_summary(full)
  assert summary['method'] == 'agm' and summary['finished']


def test_bad_options_are_one_line_errors(tmp_path, capsys):
  for options, match in (({'alpha': -1.0}, 'method.alpha'),
                         ({'cap': float('nan')}, 'method.cap'),
                         ({'modulation_starts': 3, 'modulation_ends': 2}, 'is before'),
                         ({'grad_clip': -1.0}, 'method.grad_clip')):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('agm', **options))
  with pytest.raises(ValueError, match='two or more modalities'):
    agm.AdaptiveGradientModulation({}, ('fused', 'a'), ('a',))
  workdir = tmp_path / 'run'
  code = main.main(['--config', f'{ROOT}/configs/synthetic.py:method=agm,smoke,alpha=-2',
                    '--workdir', str(workdir)])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and 'method.alpha' in lines[0], lines
  assert not workdir.exists()


def test_a_users_whole_model_trains_with_agm():
  """AGM needs only the fused logits of masked inputs: a model written from scratch (no
  ``encoders``, fused head the sum of two heads) trains, every head through the AGM loss."""
  trainer = train.Trainer(_sgd_config(grad_clip=0.0), model=SumOfHeads())
  state = trainer.init_state()
  new_state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
  assert np.isfinite(float(step_metrics['agm/coefficient/a']))
  for top in ('encoder_a', 'encoder_b', 'head_a', 'head_b'):
    assert not np.allclose(new_state.params[top]['kernel'], state.params[top]['kernel'])
