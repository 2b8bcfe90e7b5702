"""PMR: formulas against hand-computed values, prototypes, the step, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (ROOT, assert_resume_is_bit_identical, sgd_synthetic_config,
                      tiny_synthetic_config)
from mmjax import main, metrics, train
from mmjax.methods import METHODS, pmr
from test_user_model import SumOfHeads


def test_registered():
  assert METHODS['pmr'] is pmr.PrototypicalModalRebalance


FEATURES = jnp.array([[0.0, 0.0], [3.0, 4.0]])
PROTOTYPES = jnp.array([[0.0, 0.0], [0.0, 4.0]])
LABELS = jnp.array([0, 1])


def test_distances_are_euclidean_with_a_safe_gradient_at_zero():
  # ||(0,0)-(0,0)|| = 0, ||(0,0)-(0,4)|| = 4, ||(3,4)-(0,0)|| = 5, ||(3,4)-(0,4)|| = 3
  np.testing.assert_allclose(pmr.prototype_distances(FEATURES, PROTOTYPES), [[0, 4], [5, 3]])
  # d/dphi sum_k d(phi, c_k) at phi = (0,0): 0 from the zero distance, (phi - c)/d = (0,-1)
  grad = jax.grad(lambda f: pmr.prototype_distances(f, PROTOTYPES).sum())(FEATURES)
  np.testing.assert_allclose(grad[0], [0.0, -1.0])


def test_scores_ratios_and_coefficients():
  d = {'a': pmr.prototype_distances(FEATURES, PROTOTYPES)}
  # softmax([0, -4])[0] = 1/(1+e^-4) = 0.982014; softmax([-5, -3])[1] = 1/(1+e^-2) = 0.880797
  assert float(pmr.prototype_scores(d, LABELS)['a']) == pytest.approx(1.862811, rel=1e-6)
  two = pmr.imbalance_ratios({'a': jnp.float32(3.0), 'v': jnp.float32(1.5)})
  assert [float(two[m]) for m in 'av'] == pytest.approx([1.0, 2.0])
  three = pmr.imbalance_ratios({'a': jnp.float32(3.0), 'v': jnp.float32(2.4), 't': jnp.float32(1.0)})
  assert [float(three[m]) for m in 'avt'] == pytest.approx([1.0, 1.25, 3.0])
  ratio = pmr.rebalance_coefficients(three, 'ratio')  # clip(rho - 1, 0, 1)
  assert [float(ratio[m]) for m in 'avt'] == pytest.approx([0.0, 0.25, 1.0])
  constant = pmr.rebalance_coefficients(three, 'constant')  # the official code: alpha on rho > 1
  assert [float(constant[m]) for m in 'avt'] == [0.0, 1.0, 1.0]
  with pytest.raises(ValueError, match='valid rules'):
    pmr.rebalance_coefficients(three, 'tanh')


def test_prototype_cross_entropy_and_entropy():
  d = pmr.prototype_distances(FEATURES, PROTOTYPES)
  # CE row 0: log(1 + e^-4) = 0.0181499; row 1: log(1 + e^-2) = 0.1269280
  assert float(pmr.prototype_cross_entropy(d, LABELS)) == pytest.approx(
      (0.0181499 + 0.1269280) / 2, rel=1e-5)
  # p = (0.9820138, 0.0179862): H = 0.9820138 * 0.0181499 + 0.0179862 * 4.0181499 = 0.0900951;
  # p = (0.1192029, 0.8807971): H = 0.1192029 * 2.1269280 + 0.8807971 * 0.1269280 = 0.3653354
  assert float(pmr.prototype_entropy(d)) == pytest.approx((0.0900951 + 0.3653354) / 2, rel=1e-5)


def test_class_sums_new_and_ema_prototypes():
  features = jnp.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
  sums, counts = pmr.class_sums(features, jnp.array([0, 0, 1]), jnp.array([True, True, False]), 3)
  np.testing.assert_allclose(sums, [[4, 6], [0, 0], [0, 0]])
  np.testing.assert_allclose(counts, [2, 0, 0])
  previous = jnp.array([[9.0, 9.0], [7.0, 7.0], [1.0, 1.0]])
  # class 0: mean (2, 3), blended 0.8 (2, 3) + 0.2 (9, 9) = (3.4, 4.2); no example: kept
  np.testing.assert_allclose(pmr.new_prototypes(sums, counts, previous, 0.2, blend=True),
                             [[3.4, 4.2], [7, 7], [1, 1]], rtol=1e-6)
  np.testing.assert_allclose(pmr.new_prototypes(sums, counts, previous, 0.2, blend=False),
                             [[2, 3], [7, 7], [1, 1]])
  # EMA: 0.9 (0, 0) + 0.1 (2, 2) = (0.2, 0.2); a class absent from the batch is kept
  np.testing.assert_allclose(
      pmr.ema_prototypes(jnp.array([[0.0, 0.0], [2.0, 2.0]]), jnp.array([[4.0, 4.0], [0.0, 0.0]]),
                         jnp.array([2.0, 0.0]), 0.9), [[0.2, 0.2], [2, 2]], rtol=1e-6)


def _sgd_config(model='late_fusion', **method_options):
  return sgd_synthetic_config('pmr', learning_rate=1.0, model=model, **method_options)


def _encoder_features(trainer, state, inputs, m, train_mode):
  variables = {'params': state.params, **state.model_state}
  return np.asarray(trainer.model.apply(
      variables, inputs[m], method=lambda mdl, x: mdl.encoders[m](x, train=train_mode)), np.float64)


def test_prototypes_are_class_means_of_a_tenth_of_train_then_blended():
  trainer = train.Trainer(_sgd_config(prototype_momentum=0.25))
  method, ctx = trainer.method, trainer.context
  state = trainer.init_state()
  subset = method.prototype_subset(ctx, 0)
  assert len(subset) == round(0.1 * len(ctx.dataset.splits['train']))
  assert len(method.prototype_subset(ctx, 1).label) == len(subset)
  assert not np.array_equal(method.prototype_subset(ctx, 1).label, subset.label) or not (
      np.array_equal(method.prototype_subset(ctx, 1).inputs['a'], subset.inputs['a']))
  state, _ = method.on_epoch_start(ctx, state, 0)
  labels = np.asarray(subset.label)
  for m in ('a', 'b'):
    features = _encoder_features(trainer, state, subset.inputs, m, False)
    for k in range(ctx.dataset.num_classes):
      if (labels == k).any():
        np.testing.assert_allclose(state.method_state['prototypes'][m][k],
                                   features[labels == k].mean(0), rtol=1e-5, atol=1e-6)
  first = jax.device_get(state.method_state['prototypes'])
  state, _ = trainer.jit_train_step(state, trainer.next_batch())
  state, logged = method.on_epoch_start(ctx, state, 1)
  subset = method.prototype_subset(ctx, 1)
  labels = np.asarray(subset.label)
  features = _encoder_features(trainer, state, subset.inputs, 'a', False)
  k = int(labels[0])
  np.testing.assert_allclose(state.method_state['prototypes']['a'][k],
                             0.75 * features[labels == k].mean(0) + 0.25 * first['a'][k],
                             rtol=1e-5, atol=1e-6)
  assert 0 <= logged['pmr/prototype_accuracy/a'] <= 1


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('model', ['late_fusion', 'mmtm'])
def test_step_adds_the_prototype_terms_to_vanillas_gradient(model):
  """With SGD (lr 1, no momentum), the PMR update minus vanilla's (MMTM: minus the fused
  cross-entropy's gradient) is minus the gradient of ``alpha beta_slow L_PCE^slow - mu
  beta_slow H^lead``, computed here from the encoders' features, numpy scores and the
  prototypes in the state."""
  config = _sgd_config(model, alpha=2.0, entropy_weight=0.5)
  trainer = train.Trainer(config)
  vanilla_config = _sgd_config()
  vanilla_config.method = {'name': 'vanilla'}
  vanilla = train.Trainer(vanilla_config)
  state, _ = trainer.method.on_epoch_start(trainer.context, trainer.init_state(), 0)
  batch = trainer.next_batch()
  labels = np.asarray(batch['label'])
  prototypes = {m: np.asarray(p, np.float64) for m, p in state.method_state['prototypes'].items()}
  rows = np.arange(len(labels))

  def features_of(params, m):
    variables = {'params': params, **state.model_state}
    if model == 'late_fusion':
      return trainer.model.apply(variables, batch['inputs'][m],
                                 method=lambda mdl, x: mdl.encoders[m](x, train=True))
    _, captured = trainer.model.apply(variables, batch['inputs'], train=True,
                                      mutable=['intermediates'],
                                      capture_intermediates=lambda mdl, name: name == 'embed')
    return captured['intermediates'][f'encoders_{m}']['embed'][0]

  distances = {m: np.sqrt(((np.asarray(jax.jit(features_of, static_argnums=1)(state.params, m),
                                       np.float64)[:, None, :]
                            - prototypes[m][None]) ** 2).sum(-1)) for m in ('a', 'b')}
  scores = {m: _softmax(-d)[rows, labels].sum() for m, d in distances.items()}
  lead, slow = ('a', 'b') if scores['a'] > scores['b'] else ('b', 'a')
  beta = min(max(scores[lead] / scores[slow] - 1, 0.0), 1.0)
  assert beta > 0

  def extra(params):
    def logits(m):
      f = features_of(params, m)
      return -jnp.sqrt(((f[:, None, :] - prototypes[m][None].astype(np.float32)) ** 2).sum(-1))
    log_p_slow = jax.nn.log_softmax(logits(slow))
    pce = -log_p_slow[rows, labels].mean()
    log_p_lead = jax.nn.log_softmax(logits(lead))
    entropy = -(jnp.exp(log_p_lead) * log_p_lead).sum(-1).mean()
    return 2.0 * beta * pce - 0.5 * beta * entropy

  expected = jax.jit(jax.grad(extra))(state.params)
  new_pmr, step_metrics = trainer.jit_train_step(state, batch)
  if model == 'late_fusion':
    new_vanilla, _ = vanilla.jit_train_step(vanilla.init_state(), batch)
  else:  # MMTM has no probes: the fused cross-entropy reaches every branch
    def fused_loss(params):
      outputs, _ = trainer.model.apply({'params': params, **state.model_state}, batch['inputs'],
                                       train=True, mutable=list(state.model_state))
      log_p = jax.nn.log_softmax(outputs['fused'])
      return -log_p[rows, labels].mean()
    new_vanilla = state.replace(params=jax.tree.map(lambda p, g: p - g, state.params,
                                                    jax.jit(jax.grad(fused_loss))(state.params)))
  assert float(step_metrics[f'pmr/coefficient/{slow}']) == pytest.approx(beta, rel=1e-4)
  assert float(step_metrics[f'pmr/coefficient/{lead}']) == 0.0
  assert float(step_metrics[f'pmr/score/{lead}']) == pytest.approx(scores[lead], rel=1e-4)
  for top in ('encoders_a', 'encoders_b'):
    for p0, p1, q1, e in zip(jax.tree.leaves(state.params[top]), jax.tree.leaves(new_pmr.params[top]),
                             jax.tree.leaves(new_vanilla.params[top]), jax.tree.leaves(expected[top])):
      np.testing.assert_allclose(np.asarray(q1 - p1), np.asarray(e), rtol=2e-3, atol=2e-6)


def test_new_prototypes_and_leaving_the_windows_never_recompile():
  """Prototypes change every epoch, the entropy window ends after epoch 0 and the modulation
  window after epoch 1; the step compiles once. The EMA variant moves prototypes every step."""
  for options in ({}, {'prototype_update': 'ema'}):
    trainer = train.Trainer(_sgd_config(entropy_epochs=1, modulation_ends=1, **options))
    state = trainer.init_state()
    flags, prototypes = [], []
    for epoch in range(3):
      state, _ = trainer.method.on_epoch_start(trainer.context, state, epoch)
      for _ in range(2):
        flags.append((bool(state.method_state['modulating']),
                      bool(state.method_state['regularising'])))
        prototypes.append(np.asarray(state.method_state['prototypes']['a']))
        state, _ = trainer.jit_train_step(state, trainer.next_batch())
      for _ in range(trainer.steps_per_epoch - 2):
        state, _ = trainer.jit_train_step(state, trainer.next_batch())
    assert flags == [(True, True)] * 2 + [(True, False)] * 2 + [(False, False)] * 2
    assert not np.array_equal(prototypes[0], prototypes[2])
    assert np.array_equal(prototypes[0], prototypes[1]) == (not options)
    assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('pmr', entropy_epochs=1)
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  steps = [r for r in records if 'pmr/regularising' in r]
  assert [r['pmr/regularising'] for r in steps] == [1.0, 0.0]
  for r in steps:
    assert r['pmr/modulating'] == 1.0 and r['pmr/ratio/a'] >= 1 and r['pmr/ratio/b'] >= 1
    assert 0 <= r['pmr/coefficient/a'] <= 1 and r['pmr/prototype_loss/b'] > 0
  assert any('pmr/prototype_accuracy/a' in r for r in records)
  summary = metrics.read_summary(full)
  assert summary['method'] == 'pmr' and summary['finished']


def test_bad_options_and_models_without_encoders_are_one_line_errors(tmp_path, capsys):
  for options, match in (({'alpha': -1.0}, 'method.alpha'),
                         ({'coefficient': 'tanh'}, 'method.coefficient'),
                         ({'prototype_update': 'kmeans'}, 'method.prototype_update'),
                         ({'prototype_fraction': 0.0}, 'method.prototype_fraction'),
                         ({'prototype_momentum': 2.0}, 'method.prototype_momentum'),
                         ({'modulation_starts': 3, 'modulation_ends': 2}, 'is before'),
                         ({'entropy_epochs': -1}, 'method.entropy_epochs')):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('pmr', **options))
  with pytest.raises(ValueError, match="per-modality encoders are its 'encoders'"):
    train.Trainer(tiny_synthetic_config('pmr'), model=SumOfHeads())
  with pytest.raises(ValueError, match='did not run'):
    pmr.encoder_features({'encoders_a': {'__call__': (jnp.zeros((1, 2)),)}}, ('a', 'b'))
  workdir = tmp_path / 'run'
  code = main.main(['--config', f'{ROOT}/configs/synthetic.py:method=pmr,smoke,coefficient=tanh',
                    '--workdir', str(workdir)])
  lines = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and 'method.coefficient' in lines[0], lines
  assert not workdir.exists()


def test_official_code_variant_has_constant_alpha_and_no_entropy():
  trainer = train.Trainer(_sgd_config(coefficient='constant', entropy_weight=0.0, alpha=3.0))
  state, _ = trainer.method.on_epoch_start(trainer.context, trainer.init_state(), 0)
  assert not bool(state.method_state['regularising'])
  _, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
  coefficients = sorted(float(step_metrics[f'pmr/coefficient/{m}']) for m in 'ab')
  assert coefficients == [0.0, 1.0]
  assert math.isfinite(float(step_metrics['loss/fused']))
