"""The MMTM mid-fusion network: hand-computed MMTM, re-balancing and uni-modal masks, groups."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import models
from mmjax.models.mmtm import MMTM, squeeze
from mmjax.step import cross_entropy

RNG = jax.random.PRNGKey(0)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _mmtm_by_hand(params, features, channels):
  """Squeeze, concat, shared ReLU layer, per-branch sigmoid excitation, channel scaling."""
  s = {m: np.asarray(x).mean(axis=tuple(range(1, np.ndim(x) - 1))) if np.ndim(x) > 2
       else np.asarray(x) for m, x in features.items()}
  z = np.concatenate([s[m] for m in channels], -1)
  h = np.maximum(z @ params['squeeze']['kernel'] + params['squeeze']['bias'], 0)
  out = {}
  for m in channels:
    e = _sigmoid(h @ params[f'excite_{m}']['kernel'] + params[f'excite_{m}']['bias'])
    x = np.asarray(features[m])
    out[m] = x * e.reshape(e.shape[:1] + (1,) * (x.ndim - 2) + e.shape[-1:])
  return out


def test_mmtm_matches_hand_computation_on_mlp_and_conv_features():
  channels = {'a': 3, 'b': 2}
  mmtm = MMTM(channels, ratio=4)
  k1, k2 = jax.random.split(RNG)
  features = {'a': jax.random.normal(k1, (4, 3)), 'b': jax.random.normal(k2, (4, 5, 5, 2))}
  params = mmtm.init(RNG, features)['params']
  # squeeze width K * sum(C) / ratio = 2 * 5 // 4 = 2 (the official 2 (C0 + C1) / 4)
  assert params['squeeze']['kernel'].shape == (5, 2)
  assert params['excite_a']['kernel'].shape == (2, 3)
  out, inter = mmtm.apply({'params': params}, features, mutable=['intermediates'])
  expected = _mmtm_by_hand(jax.device_get(params), features, channels)
  for m in channels:
    np.testing.assert_allclose(out[m], expected[m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(inter['intermediates']['squeeze_b'][0],
                             np.asarray(features['b']).mean((1, 2)), rtol=1e-6)
  assert inter['intermediates']['scale_a'][0].shape == (4, 3)
  assert squeeze(features['a']) is features['a']


def test_rebalance_replaces_scales_by_the_constant_and_cuts_its_excitation():
  channels = {'a': 3, 'b': 2}
  mmtm = MMTM(channels)
  features = {'a': jax.random.normal(RNG, (4, 3)), 'b': jax.random.normal(RNG, (4, 2)) + 1.0}
  params = mmtm.init(RNG, features)['params']
  average = {'a': jnp.array([0.1, 0.2, 0.3]), 'b': jnp.array([0.7, 0.9])}

  def apply(p, flags):
    return mmtm.apply({'params': p}, features,
                      rebalance={m: jnp.bool_(f) for m, f in flags.items()}, average_scales=average)

  normal = apply(params, {'a': False, 'b': False})
  out = apply(params, {'a': True, 'b': False})
  np.testing.assert_allclose(out['a'], features['a'] * average['a'], rtol=1e-6)
  np.testing.assert_allclose(out['b'], normal['b'], rtol=1e-6)
  grads = jax.grad(lambda p: sum(jnp.sum(v ** 2) for v in apply(p, {'a': True, 'b': False}).values()))(params)
  assert not np.any(grads['excite_a']['kernel']) and not np.any(grads['excite_a']['bias'])
  assert np.any(grads['excite_b']['kernel']) and np.any(grads['squeeze']['kernel'])


def test_unimodal_flag_feeds_the_mean_squeeze_of_the_other_modalities():
  channels = {'a': 2, 'b': 3, 'c': 2}
  mmtm = MMTM(channels, ratio=2)
  keys = jax.random.split(RNG, 3)
  features = {m: jax.random.normal(k, (5, c)) for k, (m, c) in zip(keys, channels.items())}
  params = mmtm.init(RNG, features)['params']
  means = {m: jnp.full((c,), 0.5 * i) for i, (m, c) in enumerate(channels.items())}
  flags = {'a': jnp.bool_(True), 'b': jnp.bool_(False), 'c': jnp.bool_(True)}
  out = mmtm.apply({'params': params}, features, unimodal=flags, mean_squeeze=means)
  host = jax.device_get(params)
  for k in ('a', 'c'):  # f'_k: the other modalities' squeezes are their means
    replaced = {m: x if m == k else np.broadcast_to(means[m], x.shape) for m, x in features.items()}
    np.testing.assert_allclose(out[k], _mmtm_by_hand(host, replaced, channels)[k], rtol=1e-5)
  np.testing.assert_allclose(out['b'], _mmtm_by_hand(host, features, channels)['b'], rtol=1e-5)


def _model(encoders, **kwargs):
  config = {'name': 'mmtm', 'encoders': encoders, **kwargs}
  return models.build_model(config, tuple(encoders), 4)


def test_classifier_outputs_mean_of_branch_logits_and_fused_probe_is_harmless():
  model = _model({m: {'name': 'mlp', 'hidden': (6, 5), 'features': 3} for m in ('a', 'b')})
  assert model.mmtm_stages == (0, 1) and model.heads == ('fused', 'a', 'b')
  inputs = {'a': jax.random.normal(RNG, (8, 7)), 'b': jax.random.normal(RNG, (8, 4))}
  labels = jnp.arange(8) % 4

  @jax.jit
  def outputs_and_fused_grads(x):
    params = model.init(RNG, x, train=False)['params']

    def fused_loss(p):
      logits = model.apply({'params': p}, x, train=True,
                           head_grad_scale={'fused': jnp.float32(0), 'a': jnp.float32(1),
                                            'b': jnp.float32(1)})['fused']
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

    return model.apply({'params': params}, x, train=False), jax.grad(fused_loss)(params)

  out, grads = outputs_and_fused_grads(inputs)
  np.testing.assert_allclose(out['fused'], (out['a'] + out['b']) / 2, rtol=1e-6)
  assert all(not np.any(g) for g in jax.tree.leaves(grads))


def test_conv_branches_default_stages_and_sown_intermediates():
  model = _model({'gray': {'name': 'cnn', 'features': 8}, 'color': {'name': 'cnn', 'features': 8}})
  assert model.mmtm_stages == (1, 2, 3)
  assert model.mmtm_channels == ({'gray': 32, 'color': 32}, {'gray': 64, 'color': 64},
                                 {'gray': 64, 'color': 64})
  resnet = _model({m: {'name': 'resnet18', 'width': 4} for m in ('x', 'y')})
  assert resnet.mmtm_stages == (2, 3, 4)  # ResNet-18 layer2, layer3, layer4 as Wu et al.
  inputs = {'gray': jnp.ones((2, 28, 28, 1)), 'color': jnp.ones((2, 28, 28, 3))}
  variables = jax.eval_shape(lambda x: model.init(RNG, x, train=False), inputs)
  _, inter = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, mutable=['intermediates']), variables, inputs)
  assert inter['intermediates']['mmtm_2']['scale_color'][0].shape == (2, 64)
  assert inter['intermediates']['mmtm_0']['squeeze_gray'][0].shape == (2, 32)


def test_parameter_groups_for_three_modalities():
  model = _model({m: {'name': 'mlp', 'hidden': (4,), 'features': 3} for m in ('a', 'b', 'c')})
  inputs = {m: jnp.ones((1, 5)) for m in ('a', 'b', 'c')}
  params = jax.eval_shape(lambda x: model.init(RNG, x, train=False), inputs)['params']
  labels = model.parameter_groups(params)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  for m in ('a', 'b', 'c'):
    assert set(jax.tree.leaves(labels[f'encoders_{m}'])) == {f'branch/{m}'}
    assert set(jax.tree.leaves(labels[f'head_{m}'])) == {f'head/{m}'}
    assert set(jax.tree.leaves(labels['mmtm_0'][f'excite_{m}'])) == {f'fusion/{m}'}
  assert set(jax.tree.leaves(labels['mmtm_0']['squeeze'])) == {'fusion'}


def test_mmtm_unimodal_head_reads_the_other_branch_through_fusion_groups():
  """Why G-Blend refuses MMTM: head ``a``'s loss moves branch ``b`` and the fusion layers."""
  model = _model({m: {'name': 'mlp', 'hidden': (4,), 'features': 3} for m in ('a', 'b')})
  inputs = {m: jax.random.normal(jax.random.PRNGKey(i), (6, 5)) for i, m in enumerate(('a', 'b'))}
  params = model.init(RNG, inputs, train=False)['params']
  labels = model.parameter_groups(params)
  grads = jax.grad(lambda p: cross_entropy(
      model.apply({'params': p}, inputs, train=False)['a'], jnp.arange(6) % 3).mean())(params)
  moved = {group for group, g in zip(jax.tree.leaves(labels), jax.tree.leaves(grads))
           if np.abs(np.asarray(g)).max() > 0}
  assert moved == {'branch/a', 'head/a', 'branch/b', 'fusion/a', 'fusion'}


@pytest.mark.parametrize('kwargs, match', [
    ({'mmtm_stages': (3,)}, 'no stage 3'),
    ({'mmtm_stages': (1, 0)}, 'increasing'),
    ({'fusion': 'concat'}, 'not an option'),
])
def test_bad_model_options_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    _model({m: {'name': 'mlp', 'hidden': (4, 4)} for m in ('a', 'b')}, **kwargs)
