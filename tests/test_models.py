"""Tests of mmjax.models: encoders, late fusion, per-head gradient scaling, builders."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mmjax import models
from mmjax.models import LateFusionClassifier, MLPEncoder, ResNet18, SmallCNN
from mmjax.step import cross_entropy


def key(seed: int) -> jax.Array:
  # The 'rbg' implementation compiles random initialisers several times faster than threefry
  # on CPU; it is chosen per key, so the global JAX config is left alone.
  return jax.random.key(seed, impl='rbg')


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(key(seed), shape)


# ----- encoders -----------------------------------------------------------------------------

def stage_outputs(module: nn.Module, x: jax.Array, *, train: bool):
  """Applied as a method: each stage's output, ``embed`` of the last, and ``__call__``."""
  outs = []
  h = x
  for stage in module.stages:
    h = stage(h, train=train)
    outs.append(h)
  return outs, module.embed(h, train=train), module(x, train=train)


@pytest.mark.parametrize('encoder, input_shape, spatial', [
    (MLPEncoder(), (2, 784), None),
    (SmallCNN(), (2, 28, 28, 1), (14, 14, 7, 7)),
    (ResNet18(), (2, 28, 28, 3), (28, 28, 14, 7, 4)),
])
def test_full_size_encoder_shapes(encoder, input_shape, spatial):
  """Default-size encoders on 28x28 inputs, by shape inference only (nothing is computed)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(functools.partial(encoder.init, train=False), key(0), x)
  outs, embedded, called = jax.eval_shape(
      functools.partial(encoder.apply, method=stage_outputs, train=False), variables, x)
  assert len(outs) == encoder.num_stages
  assert tuple(o.shape[-1] for o in outs) == encoder.stage_channels
  if spatial is not None:
    assert tuple(o.shape[1] for o in outs) == spatial
  assert embedded.shape == called.shape == (2, encoder.features)


def test_stage_channels_follow_constructor_arguments():
  assert MLPEncoder(hidden=(7, 5, 3)).num_stages == 3
  assert MLPEncoder(hidden=(7, 5, 3)).stage_channels == (7, 5, 3)
  assert MLPEncoder(hidden=()).num_stages == 0
  assert SmallCNN().stage_channels == (32, 32, 64, 64)
  assert ResNet18(width=4).num_stages == 5
  assert ResNet18(width=4).stage_channels == (4, 4, 8, 16, 32)
  assert ResNet18().stage_channels == (64, 64, 128, 256, 512)


ENCODER_CASES = {
    'mlp': (MLPEncoder(hidden=(8, 6), features=5), (4, 2, 4)),
    'mlp_no_hidden': (MLPEncoder(hidden=(), features=5), (4, 8)),
    'cnn': (SmallCNN(features=5), (4, 8, 8, 1)),
    'resnet18': (ResNet18(width=4, features=5), (4, 8, 8, 3)),
}


@pytest.fixture(scope='module')
def initialized():
  """``name -> (encoder, x, variables)`` for ``ENCODER_CASES``, each initialised once."""
  cache = {}

  def get(name):
    if name not in cache:
      encoder, shape = ENCODER_CASES[name]
      x = normal(1, shape)
      cache[name] = encoder, x, models.init_variables(encoder, key(0), x)
    return cache[name]

  return get


@pytest.mark.parametrize('name', list(ENCODER_CASES))
def test_stages_then_embed_equal_call(initialized, name):
  encoder, x, variables = initialized(name)
  outs, embedded, called = jax.jit(functools.partial(
      encoder.apply, method=stage_outputs, train=False))(variables, x)
  assert len(outs) == encoder.num_stages
  assert tuple(o.shape[-1] for o in outs) == encoder.stage_channels
  assert called.shape == (4, 5)
  np.testing.assert_array_equal(embedded, called)


def test_mlp_flattens_its_input():
  encoder = MLPEncoder(hidden=(4,), features=3)
  x = normal(1, (2, 3, 5))
  variables = models.init_variables(encoder, key(0), x)
  np.testing.assert_array_equal(encoder.apply(variables, x, train=False),
                                encoder.apply(variables, x.reshape(2, 15), train=False))


def test_mlp_dropout_only_in_training():
  encoder = MLPEncoder(hidden=(16,), features=4, dropout=0.5)
  x = normal(1, (2, 8))
  variables = models.init_variables(encoder, key(0), x)
  eval_out = encoder.apply(variables, x, train=False)
  train_out = encoder.apply(variables, x, train=True, rngs={'dropout': key(2)})
  assert not np.allclose(eval_out, train_out)


def test_resnet_batch_stats_update_in_training_only(initialized):
  encoder, x, variables = initialized('resnet18')
  assert set(variables) == {'params', 'batch_stats'}
  train_out, mutated = jax.jit(functools.partial(
      encoder.apply, train=True, mutable=['batch_stats']))(variables, x)
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(mutated['batch_stats'])
  assert len(old) == len(new) == 2 * 20  # mean and var of 20 BatchNorms (17 convs + 3 shortcuts)
  assert all(not np.allclose(a, b) for a, b in zip(old, new))
  # In evaluation the running averages are read, not written: no mutable collection needed.
  eval_out = jax.jit(functools.partial(encoder.apply, train=False))(variables, x)
  assert eval_out.shape == train_out.shape == (4, 5)
  assert not np.allclose(eval_out, train_out)


def test_build_encoder():
  encoder = models.build_encoder(ml_collections.ConfigDict({'name': 'mlp', 'hidden': [4, 3]}))
  assert isinstance(encoder, MLPEncoder)
  assert encoder.hidden == (4, 3)
  assert isinstance(models.build_encoder({'name': 'cnn', 'features': 8}), SmallCNN)
  assert models.build_encoder({'name': 'resnet18', 'width': 8}).stage_channels[-1] == 64


@pytest.mark.parametrize('cfg, expected', [
    ({'name': 'vit'}, ["'vit'", "'cnn'", "'mlp'", "'resnet18'"]),
    ({'features': 3}, ["'name'", "'cnn'"]),
    ({'name': 'cnn', 'width': 8}, ["'width'", "'cnn'", "'features'"]),
    ({'name': 'resnet18', 'hidden': (3,)}, ["'hidden'", "'width'", "'features'"]),
])
def test_build_encoder_errors_name_the_bad_key(cfg, expected):
  with pytest.raises(ValueError) as error:
    models.build_encoder(cfg)
  for text in expected:
    assert text in str(error.value)


# ----- late fusion --------------------------------------------------------------------------

C = 3


def mlp(features: int = 4) -> MLPEncoder:
  return MLPEncoder(hidden=(6,), features=features)


def two_modality_inputs(batch: int = 4):
  # Deliberately not in sorted order: outputs must follow the model's modality order.
  return {'gray': normal(1, (batch, 5)), 'color': normal(2, (batch, 7))}


def encoder_features(module: LateFusionClassifier, inputs):
  return {m: module.encoders[m](inputs[m], train=False) for m in module.modalities}


def test_late_fusion_outputs_and_params():
  model = LateFusionClassifier({'gray': mlp(4), 'color': mlp(5)}, num_classes=C, fused_hidden=(8, 6))
  assert model.modalities == ('gray', 'color')
  assert model.heads == ('fused', 'gray', 'color')
  inputs = two_modality_inputs()
  variables = models.init_variables(model, key(0), inputs)
  outputs = model.apply(variables, inputs, train=False)
  assert tuple(outputs) == model.heads
  assert all(o.shape == (4, C) for o in outputs.values())
  params = variables['params']
  assert set(params) == {'encoders_gray', 'encoders_color', 'head_fused', 'head_gray', 'head_color',
                         'fused_mlp_0', 'fused_mlp_1'}
  assert params['fused_mlp_0']['kernel'].shape == (4 + 5, 8)
  assert params['fused_mlp_1']['kernel'].shape == (8, 6)
  assert params['head_fused']['kernel'].shape == (6, C)
  assert params['head_color']['kernel'].shape == (5, C)


def test_late_fusion_parameter_groups_match_what_each_head_moves():
  """Each head's loss moves exactly the groups labelled as its own (and the encoders it reads)."""
  model = LateFusionClassifier({'gray': mlp(4), 'color': mlp(5)}, num_classes=C, fused_hidden=(8,))
  inputs = two_modality_inputs()
  params = models.init_variables(model, key(0), inputs)['params']
  labels = model.parameter_groups(params)
  assert jax.tree.structure(labels) == jax.tree.structure(params)
  assert set(jax.tree.leaves(labels['fused_mlp_0'])) == {'head/fused'}
  labels_leaves = jax.tree.leaves(labels)
  expected = {'fused': {'branch/gray', 'branch/color', 'head/fused'},
              'gray': {'branch/gray', 'head/gray'}, 'color': {'branch/color', 'head/color'}}
  for head, groups_moved in expected.items():
    grads = jax.grad(lambda p, h=head: cross_entropy(
        model.apply({'params': p}, inputs, train=False)[h], jnp.arange(4) % C).mean())(params)
    moved = {g for g, leaf in zip(labels_leaves, jax.tree.leaves(grads))
             if np.abs(np.asarray(leaf)).max() > 0}
    assert moved == groups_moved, head


@pytest.mark.parametrize('fusion', ['concat', 'sum'])
def test_fusion_combines_encoder_features(fusion):
  model = LateFusionClassifier({'gray': mlp(4), 'color': mlp(4)}, num_classes=C, fusion=fusion)
  inputs = two_modality_inputs()
  variables = models.init_variables(model, key(0), inputs)
  outputs = model.apply(variables, inputs, train=False)
  features = model.apply(variables, inputs, method=encoder_features)
  params = variables['params']
  if fusion == 'concat':
    fused = jnp.concatenate([features['gray'], features['color']], axis=-1)
  else:
    fused = features['gray'] + features['color']
  assert params['head_fused']['kernel'].shape == (fused.shape[-1], C)
  np.testing.assert_allclose(
      outputs['fused'], fused @ params['head_fused']['kernel'] + params['head_fused']['bias'],
      rtol=1e-5, atol=1e-6)
  for m in model.modalities:
    head = params[f'head_{m}']
    np.testing.assert_allclose(outputs[m], features[m] @ head['kernel'] + head['bias'],
                               rtol=1e-5, atol=1e-6)


def test_sum_fusion_needs_equal_feature_sizes():
  model = LateFusionClassifier({'gray': mlp(4), 'color': mlp(5)}, num_classes=C, fusion='sum')
  with pytest.raises(ValueError, match=r"'sum'.*'gray': 4, 'color': 5"):
    models.init_variables(model, key(0), two_modality_inputs())


def test_fused_dropout_acts_on_the_fused_head_in_training_only():
  model = LateFusionClassifier({'gray': mlp(), 'color': mlp()}, num_classes=C, fused_dropout=0.5)
  inputs = two_modality_inputs()
  variables = models.init_variables(model, key(0), inputs)
  eval_out = model.apply(variables, inputs, train=False)
  train_out = model.apply(variables, inputs, train=True, rngs={'dropout': key(3)})
  assert not np.allclose(eval_out['fused'], train_out['fused'])
  for m in model.modalities:
    np.testing.assert_array_equal(eval_out[m], train_out[m])


def test_late_fusion_with_conv_encoders():
  """Shapes and collections by shape inference (nothing is computed)."""
  model = LateFusionClassifier(
      {'gray': SmallCNN(features=6), 'color': ResNet18(width=4, features=6)}, num_classes=C,
      fusion='sum')
  inputs = {'gray': jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32),
            'color': jax.ShapeDtypeStruct((2, 28, 28, 3), jnp.float32)}
  variables = jax.eval_shape(functools.partial(model.init, train=False), key(0), inputs)
  outputs, mutated = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=['batch_stats']), variables, inputs)
  assert {h: o.shape for h, o in outputs.items()} == {h: (2, C) for h in model.heads}
  assert set(mutated['batch_stats']) == {'encoders_color'}
  assert variables['params']['head_fused']['kernel'].shape == (6, C)


@pytest.mark.parametrize('kwargs, match', [
    ({'fusion': 'mean'}, r"'mean'.*'concat', 'sum'"),
    ({'fused_dropout': 1.0}, r'fused_dropout = 1\.0'),
    ({'encoders': {}}, r'at least one encoder'),
    ({'encoders': {'fused': MLPEncoder()}}, r"'fused'"),
])
def test_late_fusion_constructor_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    LateFusionClassifier(**{'encoders': {'gray': mlp()}, 'num_classes': C, **kwargs})


@pytest.fixture(scope='module')
def fusion_setup():
  model = LateFusionClassifier({'gray': mlp(), 'color': mlp()}, num_classes=C, fused_hidden=(5,))
  inputs = two_modality_inputs()
  variables = models.init_variables(model, key(0), inputs)
  return model, variables, inputs


@pytest.mark.parametrize('inputs, match', [
    ({'gray': jnp.ones((2, 5))}, r"missing modality 'color'.*\['gray', 'color'\]"),
    ({'gray': jnp.ones((2, 5)), 'color': jnp.ones((2, 7)), 'depth': jnp.ones((2, 3))},
     r"unexpected modality 'depth'.*\['gray', 'color'\]"),
])
def test_inputs_must_match_the_encoders(fusion_setup, inputs, match):
  model, variables, _ = fusion_setup
  with pytest.raises(ValueError, match=match):
    model.apply(variables, inputs, train=False)


@pytest.mark.parametrize('scales, match', [
    ({'audio': 1.0}, r"'audio'.*\['fused', 'gray', 'color'\]"),
    ({'gray': jnp.ones(2)}, r"head_grad_scale\['gray'\] must be a scalar"),
])
def test_head_grad_scale_errors(fusion_setup, scales, match):
  model, variables, inputs = fusion_setup
  with pytest.raises(ValueError, match=match):
    model.apply(variables, inputs, train=False, head_grad_scale=scales)


def make_head_grad_fn(model, variables, inputs, labels, head, counter):
  """Jitted ``(params, scales) -> (logits, grads of head's CE)``; counts its traces."""

  @jax.jit
  def grad_fn(params, scales):
    counter.append(1)

    def loss(params):
      outputs, _ = model.apply({**variables, 'params': params}, inputs, train=True,
                               head_grad_scale=scales, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(outputs[head], labels).mean(), outputs

    (_, outputs), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return outputs, grads

  return grad_fn


def scales_of(**values):
  scales = {'fused': 1.0, 'gray': 1.0, 'color': 1.0, **values}
  return {h: jnp.float32(s) for h, s in scales.items()}


def all_zero(tree) -> bool:
  return all(not np.any(leaf) for leaf in jax.tree.leaves(tree))


def all_nonzero(tree) -> bool:
  return all(np.any(leaf) for leaf in jax.tree.leaves(tree))


def test_head_grad_scale_scales_only_the_encoder_gradient():
  model = LateFusionClassifier({'gray': mlp(), 'color': mlp()}, num_classes=C, fused_hidden=(5,))
  inputs = two_modality_inputs()
  labels = jnp.array([0, 1, 2, 1])
  variables = models.init_variables(model, key(0), inputs)
  params = variables['params']
  traces = []
  grad_gray = make_head_grad_fn(model, variables, inputs, labels, 'gray', traces)

  out_1, g_1 = grad_gray(params, scales_of())
  out_0, g_0 = grad_gray(params, scales_of(gray=0.0))
  out_half, g_half = grad_gray(params, scales_of(gray=0.5))
  assert len(traces) == 1  # new scale values never retrace

  for out in (out_0, out_half):  # the forward pass is unchanged
    for h in model.heads:
      np.testing.assert_array_equal(out[h], out_1[h])
  # The gray head's loss reaches only the gray encoder and the gray head.
  assert all_nonzero(g_1['encoders_gray']) and all_nonzero(g_1['head_gray'])
  assert all_zero({k: v for k, v in g_1.items() if k not in ('encoders_gray', 'head_gray')})
  # Scale 0: a probe. The head learns as before; its encoder gets nothing.
  assert all_zero(g_0['encoders_gray'])
  jax.tree.map(np.testing.assert_array_equal, g_0['head_gray'], g_1['head_gray'])
  # Scale 0.5: exactly half the encoder gradient, the same head gradient.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, 0.5 * b),
               g_half['encoders_gray'], g_1['encoders_gray'])
  jax.tree.map(np.testing.assert_array_equal, g_half['head_gray'], g_1['head_gray'])


def test_scale_gradient_is_exact_through_batch_norm(initialized):
  encoder, x, variables = initialized('resnet18')

  @jax.jit
  def value_and_grad(params, scale):
    def loss(params):
      features, _ = encoder.apply({**variables, 'params': params}, x, train=True,
                                  mutable=['batch_stats'])
      return jnp.sin(models.scale_gradient(features, scale)).sum()
    return jax.value_and_grad(loss)(params)

  loss_1, g_1 = value_and_grad(variables['params'], jnp.float32(1.0))
  loss_half, g_half = value_and_grad(variables['params'], jnp.float32(0.5))
  loss_0, g_0 = value_and_grad(variables['params'], jnp.float32(0.0))
  assert loss_1 == loss_half == loss_0
  assert all_nonzero(g_1) and all_zero(g_0)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, 0.5 * b), g_half, g_1)


def test_fused_head_grad_scale_reaches_every_encoder(fusion_setup):
  model, variables, inputs = fusion_setup
  params = variables['params']
  labels = jnp.array([0, 1, 2, 1])
  traces = []
  grad_fused = make_head_grad_fn(model, variables, inputs, labels, 'fused', traces)
  _, g_1 = grad_fused(params, scales_of())
  _, g_0 = grad_fused(params, scales_of(fused=0.0))
  _, g_gray_0 = grad_fused(params, scales_of(gray=0.0, color=0.0))
  assert len(traces) == 1
  fused_head = ('head_fused', 'fused_mlp_0')
  for m in model.modalities:
    assert all_nonzero(g_1[f'encoders_{m}'])
    assert all_zero(g_0[f'encoders_{m}'])
    # The modality heads' scales do not touch the fused head's path into the encoders.
    jax.tree.map(np.testing.assert_array_equal, g_gray_0[f'encoders_{m}'], g_1[f'encoders_{m}'])
  for name in fused_head:
    assert all_nonzero(g_0[name])
    jax.tree.map(np.testing.assert_array_equal, g_0[name], g_1[name])


def test_missing_head_grad_scales_default_to_one(fusion_setup):
  model, variables, inputs = fusion_setup
  labels = jnp.array([0, 1, 2, 1])

  @jax.jit
  def grads(scales):
    def loss(params):
      outputs = model.apply({'params': params}, inputs, train=True, head_grad_scale=scales)
      return sum(optax.softmax_cross_entropy_with_integer_labels(o, labels).mean()
                 for o in outputs.values())
    return jax.grad(loss)(variables['params'])

  # Equal up to the order in which XLA adds the two heads' gradients in the gray encoder.
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
               grads({'gray': jnp.float32(1.0)}), grads(None))


# ----- builders -----------------------------------------------------------------------------

def model_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      'name': 'late_fusion',
      'encoders': {'gray': {'name': 'cnn', 'features': 16},
                   'color': {'name': 'mlp', 'hidden': [8], 'features': 16}},
      'fusion': 'concat', 'fused_hidden': [], 'fused_dropout': 0.0})
  config.update(overrides)
  return config


def test_build_model():
  model = models.build_model(model_config(fused_hidden=[8, 4], fusion='sum'), ['color', 'gray'], 10)
  assert isinstance(model, LateFusionClassifier)
  assert model.heads == ('fused', 'color', 'gray')  # the order of `modalities`
  assert isinstance(model.encoders['gray'], SmallCNN) and model.encoders['gray'].features == 16
  assert model.encoders['color'].hidden == (8,)
  assert (model.num_classes, model.fusion, model.fused_hidden) == (10, 'sum', (8, 4))


@pytest.mark.parametrize('config, modalities, expected', [
    (model_config(name='mmtn'), ['gray', 'color'], ["'mmtn'", "'late_fusion'"]),
    (model_config(), ['gray'], ['model.encoders.color', "['gray']"]),
    (model_config(), ['gray', 'color', 'depth'], ["'depth'", 'model.encoders.depth']),
    (model_config(fuse='sum'), ['gray', 'color'], ['model.fuse', "'fusion'", "'fused_hidden'"]),
    (model_config(encoders={'gray': {'name': 'cnn', 'width': 2}, 'color': {'name': 'mlp'}}),
     ['gray', 'color'], ['model.encoders.gray', "'width'", "'features'"]),
    (model_config(encoders={'gray': {'name': 'vgg'}, 'color': {'name': 'mlp'}}),
     ['gray', 'color'], ['model.encoders.gray', "'vgg'", "'resnet18'"]),
    (model_config(fusion='max'), ['gray', 'color'], ["'max'", "'concat'"]),
])
def test_build_model_errors_name_the_bad_key(config, modalities, expected):
  with pytest.raises(ValueError) as error:
    models.build_model(config, modalities, 10)
  for text in expected:
    assert text in str(error.value)
