"""Per-head gradients in two backward passes (mmjax.methods.per_head) and G-Blend's in-step
estimator built on them, against ``jax.jacrev`` and float64 inner products computed here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, tiny_synthetic_config
from mmjax import train
from mmjax.methods import gblend_fn, per_head
from mmjax.models import LateFusionClassifier, MLPEncoder
from mmjax.models import groups
from mmjax.step import cross_entropy


def _model_and_data(k, seed=0):
  modalities = tuple(f'm{i}' for i in range(k))
  model = LateFusionClassifier({m: MLPEncoder(hidden=(6,), features=4 + i)
                                for i, m in enumerate(modalities)},
                               num_classes=3, fused_hidden=(5,))
  rng = np.random.default_rng(seed)

  def batch(n):
    return {'inputs': {m: jnp.asarray(rng.normal(size=(n, 3 + i)), jnp.float32)
                       for i, m in enumerate(modalities)},
            'label': jnp.asarray(rng.integers(0, 3, size=n))}

  batches = [batch(6), batch(6), batch(8)]
  params = model.init(jax.random.PRNGKey(seed), batches[0]['inputs'], train=False)['params']
  heads = ('fused', *modalities)

  def losses(p, b, rng=None):
    del rng
    outputs = model.apply({'params': p}, b['inputs'], train=True)
    vector = jnp.stack([cross_entropy(outputs[h], b['label']).mean() for h in heads])
    return vector, b['label'].shape[0]

  return heads, params, model.parameter_groups(params), batches, losses


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_plan_shares_one_pass_for_unimodal_heads_and_none_with_fusion_layers():
  labels = {'e0': 'branch/a', 'e1': 'branch/b', 'e2': 'branch/c', 'h': 'head/a', 'i': 'head/b',
            'j': 'head/c', 'f': 'head/fused'}
  reads = per_head.head_reads(('fused', 'a', 'b', 'c'), labels)
  assert reads == (None, frozenset({'branch/a', 'head/a'}), frozenset({'branch/b', 'head/b'}),
                   frozenset({'branch/c', 'head/c'}))
  assert per_head.plan_passes(reads) == ((0,), (1, 2, 3))
  with_fusion = {**labels, 'x': groups.FUSION}
  assert per_head.head_reads(('fused', 'a'), with_fusion) == (None, None)
  assert per_head.plan_passes((None, None, None)) == ((0,), (1,), (2,))
  # Heads sharing a group cannot share a pass.
  assert per_head.plan_passes((frozenset('x'), frozenset('xy'), frozenset('z'))) == ((0, 2), (1,))


@pytest.mark.parametrize('k', [2, 3])
def test_two_backward_passes_give_the_jacobian(k):
  heads, params, labels, batches, losses = _model_and_data(k)
  reference = jax.jacrev(lambda p: losses(p, batches[0])[0])(params)
  values, head_grads, aux = jax.jit(lambda p: per_head.per_head_gradients(
      losses, p, batches[0], parameter_labels=labels, reads=per_head.head_reads(heads, labels),
      has_aux=True))(params)
  assert len(head_grads.pass_grads) == 2 and aux == 6
  np.testing.assert_allclose(values, losses(params, batches[0])[0], rtol=1e-6)
  for got, want in zip(jax.tree.leaves(head_grads.stacked()), jax.tree.leaves(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  other = jax.tree.map(lambda x: 2 * x + 1, head_grads)
  inner = head_grads.inner(other)
  for i in range(len(heads)):
    g = _flat(jax.tree.map(lambda x: x[i], reference))  # zero outside head i's groups
    assert float(inner[i]) == pytest.approx(g @ (2 * g + 1), rel=1e-5)


@pytest.mark.parametrize('k', [2, 3])
def test_statistics_and_blended_gradient_match_jacrev_with_a_probe(k):
  heads, params, labels, batches, losses = _model_and_data(k, seed=k)
  first, second, heldout = batches
  stats = jax.jit(lambda p: gblend_fn.per_head_statistics(
      losses, p, first, second, heldout, heads=heads, parameter_labels=labels))(params)
  jacobians = [jax.jacrev(lambda p, b=b: losses(p, b)[0])(params) for b in batches]
  weights = np.zeros(len(heads), np.float32)
  weights[0], weights[1] = 0.6, 0.4  # the last modality's head is a probe
  blended = gblend_fn.blend_head_gradients(stats.head_gradients, jnp.asarray(weights), labels)
  for i in range(len(heads)):
    g1, g2, gv = (_flat(jax.tree.map(lambda x: x[i], jac)) for jac in jacobians)
    g = (g1 + g2) / 2
    assert float(stats.generalization[i]) == pytest.approx(gv @ g, rel=1e-4, abs=1e-7)
    assert float(stats.overfitting[i]) == pytest.approx(g1 @ g2 - gv @ g, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(_flat(jax.tree.map(lambda x: x[i], stats.grads)), g,
                               rtol=1e-4, atol=1e-7)
  # The probe rule by hand: head parameters take coefficient 1 for a head of weight 0.
  mean_jacobian = jax.tree.map(lambda a, b: (np.asarray(a, np.float64) + np.asarray(b)) / 2,
                               jacobians[0], jacobians[1])
  probe_weights = np.where(weights > 0, weights, 1.0)
  expected = jax.tree.map(
      lambda lab, jac: np.tensordot(
          probe_weights if groups.kind_of(lab) == groups.HEAD else weights, jac, axes=1),
      labels, mean_jacobian)
  for got, want in zip(jax.tree.leaves(blended), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  last_head = jax.tree.leaves(blended['head_' + heads[-1]])
  assert all(np.abs(np.asarray(x)).sum() > 0 for x in last_head)  # the probe still learns


# ----- G-Blend's gradient estimator every m steps ---------------------------------------------
def _trainer(**method):
  config = tiny_synthetic_config('gblend', estimator='gradient')
  config.method.update({'every_steps': 2, **method})
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.0
  config.optimizer.learning_rate = 0.1
  return train.Trainer(config)


def test_estimate_every_m_steps_runs_plain_blended_steps_between_without_retracing():
  trainer = _trainer(estimate_every=3)
  heads = trainer.method.heads
  state = trainer.init_state()
  weights = {'fused': 0.5, 'a': 0.5, 'b': 0.0}  # b is a probe
  state = jax.device_put(state.replace(method_state={
      **state.method_state, 'weights': {h: jnp.float32(w) for h, w in weights.items()}}),
                         trainer.replicated)
  history = []
  for step in range(7):
    batch = trainer.next_batch()
    before = state
    state, _ = trainer.jit_train_step(state, batch)
    ema = {h: float(state.method_state['ema_g'][h]) for h in heads}
    history.append(ema)
    assert bool(before.method_state['estimate']) == (step % 3 == 0)
    if step % 3 == 0:
      assert ema != (history[-2] if step else {h: 0.0 for h in heads})
    else:
      assert ema == history[-2]  # no estimate: the EMA stays
    if step == 1:  # a plain blended step, by hand: sum_h c_h grad CE_h with b a probe
      w = {h: float(before.method_state['weights'][h]) for h in heads}

      def blended(p, b=batch, w=w):
        outputs = trainer.model.apply(
            {'params': p}, b['inputs'], train=True,
            head_grad_scale={h: jnp.float32(w[h] > 0) for h in heads})
        return sum((w[h] if w[h] > 0 else 1.0) * cross_entropy(outputs[h], b['label']).mean()
                   for h in heads)

      expected = jax.grad(blended)(before.params)
      for p, q, g in zip(jax.tree.leaves(before.params), jax.tree.leaves(state.params),
                         jax.tree.leaves(expected)):
        np.testing.assert_allclose((p - q) / 0.1, g, rtol=2e-4, atol=1e-6)
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_estimate_every_debiases_by_the_number_of_estimates():
  trainer = _trainer(estimate_every=2, every_steps=4)
  heads = trainer.method.heads
  state = trainer.init_state()
  for _ in range(4):  # estimates on steps 0 and 2; weights updated after step 3
    state, _ = trainer.jit_train_step(state, trainer.next_batch())
  decay = trainer.method.ema_decay
  debias = 1 - decay ** 2
  for h in heads:
    delta_g = float(state.method_state['ema_g'][h]) / debias
    delta_o = np.sqrt(float(state.method_state['ema_o2'][h]) / debias)
    assert float(state.method_state['delta_g'][h]) == pytest.approx(delta_g, rel=1e-5)
    assert float(state.method_state['delta_o'][h]) == pytest.approx(delta_o, rel=1e-5)


def test_estimate_every_is_checked():
  with pytest.raises(ValueError, match='method.estimate_every'):
    _trainer(estimate_every=0)


def test_estimate_every_resumes_bit_identically(tmp_path):
  """The estimate flag lives in the checkpoint: a run stopped after epoch 1 and resumed (m = 3
  does not divide the epoch's 7 steps) ends as one that never stopped."""
  config = tiny_synthetic_config('gblend', estimator='gradient')
  config.num_epochs = 2
  config.method.update({'every_steps': 2, 'estimate_every': 3})
  assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
