"""MLA: formulas against hand-computed values, the alternating step against PyTorch-style SGD
written out by hand, the entropy-weighted fused evaluation, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, sgd_synthetic_config, tiny_synthetic_config
from mmjax import metrics, step, train
from mmjax.methods import METHODS, mla
from mmjax.models import groups, shared_head


def test_registered_and_switches_to_the_shared_head_model():
  assert METHODS['mla'] is mla.AlternatingUnimodalAdaptation
  config = tiny_synthetic_config('mla')
  assert config.model.name == 'shared_head' and config.model.fusion == 'entropy'
  assert set(config.model.encoders) == {'a', 'b'}


def test_entropy_and_fusion_weights_by_hand():
  # p = softmax(ln 3, 0) = (3/4, 1/4): H = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.562335;
  # uniform over 2 classes: H = ln 2 = 0.693147.
  certain, uniform = jnp.array([[math.log(3.0), 0.0]]), jnp.array([[0.0, 0.0]])
  h_certain = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
  assert float(shared_head.prediction_entropy(certain)[0]) == pytest.approx(h_certain, rel=1e-6)
  weights = shared_head.entropy_fusion_weights({'a': uniform, 'b': certain})
  # lambda_b = exp(H_max - H_b) / (exp(H_max - H_a) + exp(H_max - H_b)), H_max = H_a = ln 2
  expected_b = math.exp(math.log(2) - h_certain) / (1 + math.exp(math.log(2) - h_certain))
  assert float(weights['b'][0]) == pytest.approx(expected_b, rel=1e-6)
  assert float(weights['a'][0]) == pytest.approx(1 - expected_b, rel=1e-6)
  fused = shared_head.fuse({'a': uniform, 'b': certain}, 'entropy')
  np.testing.assert_allclose(fused, [[expected_b * math.log(3.0), 0.0]], rtol=1e-6)
  np.testing.assert_allclose(shared_head.fuse({'a': uniform, 'b': certain}, 'mean'),
                             [[math.log(3.0) / 2, 0.0]], rtol=1e-6)
  with pytest.raises(ValueError, match='model.fusion'):
    shared_head.fuse({'a': uniform}, 'max')


def test_projector_update_and_head_gradient_projection_by_hand():
  # P = I, r = (1, 0), alpha = 0.1: k = (1, 0)^T, r k = 1,
  # P - k k^T / 1.1 = diag(1 - 1/1.1, 1) = diag(0.090909, 1); |P|_F = sqrt(0.090909^2 + 1)
  projector = mla.update_projector(jnp.eye(2), jnp.array([1.0, 0.0]), jnp.float32(0.1))
  norm = math.sqrt((1 - 1 / 1.1) ** 2 + 1)
  np.testing.assert_allclose(projector, [[(1 - 1 / 1.1) / norm, 0.0], [0.0, 1 / norm]], rtol=1e-6)
  # torch: G (C x D) <- G P^T; Flax kernel (D x C) = G^T <- P G^T. G = [[1, 1], [2, 0]] (C = 2):
  g_torch = np.array([[1.0, 1.0], [2.0, 0.0]])
  expected = (g_torch @ np.asarray(projector).T).T
  np.testing.assert_allclose(mla.project_head_gradient(jnp.asarray(g_torch.T), projector),
                             expected, rtol=1e-6)
  # alpha_t = 0.1^(1 + i/N): batch 0 -> 0.1, batch 5 of 10 -> 0.1^1.5 = 0.0316228
  assert float(mla.projector_alpha(jnp.int32(0), 10)) == pytest.approx(0.1)
  assert float(mla.projector_alpha(jnp.int32(5), 10)) == pytest.approx(0.1 ** 1.5, rel=1e-6)


def _sgd_config(**method_options):
  return sgd_synthetic_config('mla', momentum=0.9, weight_decay=1e-2, **method_options)


@pytest.mark.parametrize('options', [{}, {'inactive_encoders': 'skip', 'projection': 'none'}])
def test_two_steps_match_pytorch_style_sgd_written_out(options):
  """Two batches of MLA against the official loop written out with numpy SGD (momentum 0.9,
  weight decay): per modality, backward of its loss at the current parameters, the projection
  of the head kernel's gradient, then `step()` that skips parameters whose grad is None and
  applies momentum and weight decay to zeroed ones (PyTorch 1.8), grads deleted per batch."""
  trainer = train.Trainer(_sgd_config(**options))
  state = trainer.init_state()
  model, model_state = trainer.model, state.model_state
  labels = trainer.model.parameter_groups(state.params)
  lr, momentum, decay = 0.1, 0.9, 1e-2
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(state.params))
  buffers = jax.tree.map(lambda _: None, params)
  projector = np.eye(params['shared_head']['kernel'].shape[0])
  steps_per_epoch = trainer.steps_per_epoch
  updates_done = 0
  batches = [trainer.next_batch() for _ in range(2)]
  for batch_index, batch in enumerate(batches):
    has_grad = jax.tree.map(lambda _: False, params)  # .grad is None at the start of a batch
    for m in ('a', 'b'):
      p32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)

      def loss(p, m=m):
        outputs, _, _ = step.forward(model, p, model_state, batch['inputs'], train=True)
        return step.cross_entropy(outputs[m], batch['label']).mean()

      grads = jax.tree.map(lambda x: np.asarray(x, np.float64), jax.device_get(jax.grad(loss)(p32)))
      _, sown = model.apply({'params': p32, **model_state}, batch['inputs'], train=True,
                            sow_features=True, mutable=['intermediates'])
      r = np.asarray(sown['intermediates']['features'][0][m], np.float64).mean(0)
      if options.get('projection', 'paper') == 'paper' and updates_done > 0:
        alpha = 0.1 ** (1 + batch_index / steps_per_epoch)
        k = projector @ r[:, None]
        projector = projector - (k @ k.T) / (alpha + (r @ k).item())
        projector = projector / np.linalg.norm(projector)
        grads['shared_head']['kernel'] = projector @ grads['shared_head']['kernel']
      owns = {groups.FUSION, f'branch/{m}'}
      has_grad = jax.tree.map(lambda h, label: h or label in owns, has_grad, labels)
      if options.get('inactive_encoders') == 'skip':
        has_grad = jax.tree.map(lambda label: label in owns, labels)

      def sgd(p, g, buf, active):
        if not active:
          return p, buf
        d = g + decay * p
        buf = d if buf is None else momentum * buf + d
        return p - lr * buf, buf

      moved = jax.tree.map(sgd, params, grads, buffers, has_grad,
                           is_leaf=lambda x: x is None)
      params = jax.tree.map(lambda pair: pair[0], moved, is_leaf=lambda x: isinstance(x, tuple))
      buffers = jax.tree.map(lambda pair: pair[1], moved, is_leaf=lambda x: isinstance(x, tuple))
      updates_done += 1
  for batch in batches:
    state, _ = trainer.jit_train_step(state, batch)
  for got, want in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params)):
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-6)
  if options.get('projection', 'paper') == 'paper':
    np.testing.assert_allclose(state.method_state['projector'], projector, rtol=1e-4, atol=1e-6)


def test_fused_evaluation_is_entropy_weighted(tmp_path):
  config = tiny_synthetic_config('mla')
  config.num_epochs = 1
  trainer = train.Trainer(config)
  state = trainer.init_state()
  for _ in range(trainer.steps_per_epoch):
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
  split = trainer.dataset.splits['test']
  inputs = {m: jnp.asarray(x) for m, x in split.inputs.items()}
  outputs = trainer.model.apply({'params': state.params, **state.model_state}, inputs, train=False)
  logits = {m: np.asarray(outputs[m], np.float64) for m in 'ab'}

  def entropy(z):
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return -(p * np.log(p)).sum(1)

  h = {m: entropy(z) for m, z in logits.items()}
  h_max = np.maximum(h['a'], h['b'])
  w = {m: np.exp(h_max - h[m]) for m in h}
  fused = sum(w[m][:, None] / (w['a'] + w['b'])[:, None] * logits[m] for m in 'ab')
  labels = np.asarray(split.label)
  result = trainer.evaluate(state, 'test')
  assert result['accuracy/fused'] == pytest.approx((fused.argmax(1) == labels).mean())
  assert result['accuracy/a'] == pytest.approx((logits['a'].argmax(1) == labels).mean())


def test_compiles_once_while_the_projector_changes():
  trainer = train.Trainer(_sgd_config())
  state = trainer.init_state()
  projectors = []
  for _ in range(trainer.steps_per_epoch + 2):
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    projectors.append(np.asarray(state.method_state['projector']))
  assert not np.allclose(projectors[0], projectors[-1])
  assert 0 < float(step_metrics['mla/fusion_weight/a']) < 1
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('mla')
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  assert len(records) == 2
  for r in records:
    assert r['mla/fusion_weight/a'] + r['mla/fusion_weight/b'] == pytest.approx(1.0, abs=1e-5)
  summary = metrics.read_summary(full)
  assert summary['method'] == 'mla' and summary['finished']


def test_bad_options_and_models_are_refused():
  for options, match in (({'projection': 'added'}, 'method.projection'),
                         ({'inactive_encoders': 'frozen'}, 'method.inactive_encoders')):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('mla', **options))
  late = tiny_synthetic_config('mla')
  late.model = {'name': 'late_fusion', 'encoders': late.model.encoders.to_dict()}
  with pytest.raises(ValueError, match="needs model.name = 'shared_head'"):
    train.Trainer(late)
  widths = tiny_synthetic_config('mla')
  widths.model.encoders.b.features = 16
  with pytest.raises(ValueError, match='the same features from every encoder'):
    train.Trainer(widths)
  fusion = tiny_synthetic_config('mla')
  fusion.model.fusion = 'max'
  with pytest.raises(ValueError, match='model.fusion'):
    train.Trainer(fusion)
