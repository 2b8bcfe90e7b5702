"""The literature's encoders (issue 10): ImageNet-stem ResNet-18 on a spectrogram and on frames.

Shapes for the papers' inputs, the parameter count of torchvision's ResNet-18 (counted here by
hand), OGM's initialisation, the stem's windows against a NumPy loop, pooling over frames, the
MMTM squeeze over frames, bfloat16, and a training run of each model with one compile.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import config_lib, data, models, train
from mmjax.models.resnet import ImageNetStem, ResNet18Frames, ResNet18Image, ResNet18Spectrogram


def key(seed: int) -> jax.Array:
  return jax.random.key(seed, impl='rbg')


def abstract_variables(encoder: nn.Module, shape):
  return jax.eval_shape(lambda x: encoder.init(key(0), x, train=False),
                        jax.ShapeDtypeStruct(shape, jnp.float32))


def stage_shapes(encoder: nn.Module, shape) -> tuple[list, tuple]:
  """The output shape of every stage and of ``embed`` (traced, nothing computed)."""
  shapes = []

  def run(module, x):
    for stage in module.stages:
      x = stage(x, train=False)
      shapes.append(tuple(x.shape))
    return module.embed(x, train=False)

  variables = abstract_variables(encoder, shape)
  out = jax.eval_shape(lambda v, x: encoder.apply(v, x, method=run), variables,
                       jax.ShapeDtypeStruct(shape, jnp.float32))
  return shapes, tuple(out.shape)


def test_spectrogram_of_crema_d_is_a_9x6_map_then_512_features():
  """OGM's CREMA-D audio, (B, 1, 257, 188) in PyTorch, is 9x6x512 before the pool (methods.md 1.4)."""
  for shape in ((2, 257, 188), (2, 257, 188, 1)):
    shapes, embedding = stage_shapes(ResNet18Spectrogram(), shape)
    assert shapes == [(2, 65, 47, 64), (2, 65, 47, 64), (2, 33, 24, 128), (2, 17, 12, 256),
                      (2, 9, 6, 512)]
    assert embedding == (2, 512)
  # A 1024x128 Kaldi filter bank (Kinetics-Sounds): a 32x4 map.
  assert stage_shapes(ResNet18Spectrogram(), (1, 1024, 128))[0][-1] == (1, 32, 4, 512)


def test_frames_224_are_7x7_maps_per_frame_then_512_features():
  shapes, embedding = stage_shapes(ResNet18Frames(), (2, 3, 224, 224, 3))
  assert shapes == [(2, 3, 56, 56, 64), (2, 3, 56, 56, 64), (2, 3, 28, 28, 128),
                    (2, 3, 14, 14, 256), (2, 3, 7, 7, 512)]
  assert embedding == (2, 512)


def test_image_224_is_a_7x7_map_as_wu_et_al_modelnet40_branches():
  shapes, embedding = stage_shapes(ResNet18Image(), (2, 224, 224, 3))
  assert shapes[0] == (2, 56, 56, 64) and shapes[-1] == (2, 7, 7, 512)
  assert embedding == (2, 512)


def test_frames_of_one_frame_are_the_image_encoder():
  """resnet18_frames on [B, 1, H, W, 3] is resnet18_image on [B, H, W, 3] with the same
  weights, in training (BatchNorm's batch statistics and their update) and in evaluation."""
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)
  image, frames = ResNet18Image(width=4), ResNet18Frames(width=4)
  variables = image.init(key(3), x, train=False)
  per_frame = {c: {s: {'stage': t} for s, t in tree.items()} for c, tree in variables.items()}
  assert jax.tree.structure(per_frame) == jax.tree.structure(
      abstract_variables(frames, (2, 1, 32, 32, 3)))
  for train_mode in (True, False):
    out, stats = image.apply(variables, x, train=train_mode, mutable=['batch_stats'])
    frames_out, frames_stats = frames.apply(per_frame, x[:, None], train=train_mode,
                                            mutable=['batch_stats'])
    np.testing.assert_allclose(frames_out, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(frames_stats['batch_stats']['stages_4']['stage']['BasicBlock_1']
                               ['BatchNorm_1']['var'],
                               stats['batch_stats']['stages_4']['BasicBlock_1']['BatchNorm_1']['var'],
                               rtol=1e-5)


def test_wrong_input_ranks_are_one_clear_error():
  with pytest.raises(ValueError, match=r'resnet18_spectrogram takes .*\(2, 8, 8, 3\)'):
    abstract_variables(ResNet18Spectrogram(width=2), (2, 8, 8, 3))
  with pytest.raises(ValueError, match=r'resnet18_frames takes .*\(2, 8, 8, 3\)'):
    abstract_variables(ResNet18Frames(width=2), (2, 8, 8, 3))
  with pytest.raises(ValueError, match=r'resnet18_image takes .*\(2, 1, 8, 8, 3\)'):
    abstract_variables(ResNet18Image(width=2), (2, 1, 8, 8, 3))


@pytest.mark.parametrize('option,value', [('width', 0), ('width', True), ('features', 0),
                                          ('features', 2.5)])
def test_bad_width_or_features_is_one_clear_error(option, value):
  for name in ('resnet18_spectrogram', 'resnet18_image', 'resnet18_frames'):
    with pytest.raises(ValueError, match=f'model.encoders.a: {option} = {value!r} must be'):
      models.build_model({'name': 'late_fusion', 'encoders': {
          'a': {'name': name, option: value}, 'b': {'name': 'mlp'}}}, ('a', 'b'), 3)


def resnet18_parameters_by_hand(in_channels: int, width: int = 64) -> int:
  """torchvision's ResNet-18 without ``fc``, layer by layer: bias-free convs, BatchNorm's
  weight and bias (its running statistics are buffers, not parameters)."""
  def conv(k, c_in, c_out):
    return k * k * c_in * c_out

  def bn(c):
    return 2 * c

  total = conv(7, in_channels, width) + bn(width)  # conv1, bn1
  c_in = width
  for layer, c in enumerate((width, 2 * width, 4 * width, 8 * width)):
    for block in range(2):
      stride = 2 if layer > 0 and block == 0 else 1
      total += conv(3, c_in, c) + bn(c) + conv(3, c, c) + bn(c)
      if stride != 1 or c_in != c:
        total += conv(1, c_in, c) + bn(c)  # downsample
      c_in = c
  return total


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_count_is_torchvision_resnet18_without_fc():
  # torchvision's resnet18() has 11,689,512 parameters; fc is Linear(512, 1000): 513,000.
  assert resnet18_parameters_by_hand(3) == 11_689_512 - (512 * 1000 + 1000) == 11_176_512
  frames = abstract_variables(ResNet18Frames(), (1, 1, 64, 64, 3))
  assert count(frames['params']) == 11_176_512
  assert count(abstract_variables(ResNet18Image(), (1, 64, 64, 3))['params']) == 11_176_512
  # One input channel: conv1 has 7*7*(3-1)*64 = 6,272 weights fewer.
  spectrogram = abstract_variables(ResNet18Spectrogram(), (1, 64, 64))
  assert count(spectrogram['params']) == resnet18_parameters_by_hand(1) == 11_176_512 - 6_272
  # BatchNorm's running mean and variance: one pair per BatchNorm, as torchvision's buffers.
  assert count(frames['batch_stats']) == 2 * (64 + 4 * 64 + 4 * 128 + 4 * 256 + 4 * 512 + 128
                                               + 256 + 512)
  # The optional Dense after the pool (ours): 512 * features + features.
  dense = abstract_variables(ResNet18Frames(features=10), (1, 1, 64, 64, 3))
  assert count(dense['params']) == 11_176_512 + 512 * 10 + 10


def test_initialisation_is_ogm_kaiming_fan_out_and_unit_batchnorm():
  encoder = ResNet18Spectrogram(width=16, features=256)
  variables = jax.jit(lambda x: encoder.init(jax.random.PRNGKey(0), x, train=False))(
      jnp.zeros((1, 32, 32)))
  params = variables['params']
  stem = params['stages_0']['Conv_0']['kernel']
  assert stem.shape == (7, 7, 1, 16)
  # Kaiming normal, fan_out = 7 * 7 * 16, ReLU gain sqrt(2): std = sqrt(2 / 784) = 0.05051
  # (784 draws: the sample std is within 8% with probability > 0.99).
  assert np.std(stem) == pytest.approx(0.050508, rel=0.08)
  assert abs(np.mean(stem)) < 0.008
  assert np.max(np.abs(stem)) > 2.5 * 0.050508  # plain normal, not truncated at 2 std
  deep = params['stages_4']['BasicBlock_1']['Conv_1']['kernel']
  assert np.std(deep) == pytest.approx(np.sqrt(2 / (3 * 3 * 128)), rel=0.02)
  scales = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
            if 'BatchNorm' in jax.tree_util.keystr(p) and p[-1].key == 'scale']
  biases = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
            if 'BatchNorm' in jax.tree_util.keystr(p) and p[-1].key == 'bias']
  assert len(scales) == len(biases) == 20
  assert all(np.all(s == 1) for s in scales) and all(np.all(b == 0) for b in biases)
  # The optional Dense on the 8 * 16 = 128 pooled features: Xavier normal,
  # std = sqrt(2 / (128 + 256)), zero bias.
  assert params['head']['kernel'].shape == (128, 256)
  assert np.std(params['head']['kernel']) == pytest.approx(np.sqrt(2 / 384), rel=0.03)
  assert np.all(params['head']['bias'] == 0)


def test_stem_sees_pytorch_windows():
  """Conv 7x7/2 padding 3 then max-pool 3x3/2 padding 1, against a NumPy loop (eval-mode
  BatchNorm at its initial statistics divides by sqrt(1 + 1e-5))."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 11, 9, 2)).astype(np.float32)
  stem = ImageNetStem(3)
  variables = stem.init(key(0), jnp.asarray(x), train=False)
  kernel = np.asarray(variables['params']['Conv_0']['kernel'])
  out = np.asarray(stem.apply(variables, jnp.asarray(x), train=False))

  padded = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
  conv_h, conv_w = (11 + 6 - 7) // 2 + 1, (9 + 6 - 7) // 2 + 1
  conv = np.zeros((conv_h, conv_w, 3))
  for i in range(conv_h):
    for j in range(conv_w):
      window = padded[2 * i:2 * i + 7, 2 * j:2 * j + 7, :]
      conv[i, j] = np.einsum('hwc,hwco->o', window, kernel)
  relu = np.maximum(conv / np.sqrt(1 + 1e-5), 0)
  pooled_padded = np.pad(relu, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  pool_h, pool_w = (conv_h + 2 - 3) // 2 + 1, (conv_w + 2 - 3) // 2 + 1
  expected = np.array([[pooled_padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1))
                        for j in range(pool_w)] for i in range(pool_h)])
  assert out.shape == (1, pool_h, pool_w, 3) == (1, 3, 3, 3)
  np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)


def test_frames_embedding_is_the_mean_of_per_frame_embeddings():
  """OGM's AdaptiveAvgPool3d over (512, T, 7, 7): the mean over frames of each frame's own
  embedding (evaluation mode, so that BatchNorm does not mix frames)."""
  encoder = ResNet18Frames(width=4)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 32, 32, 3)), jnp.float32)
  variables = encoder.init(key(1), x, train=False)
  def apply(v, x):
    return encoder.apply(v, x, train=False)

  clip = apply(variables, x)
  # Each frame as a clip of its own: [2 * 3, 1, 32, 32, 3] -> [2, 3, 32] embeddings.
  per_frame = apply(variables, x.reshape(6, 1, 32, 32, 3)).reshape(2, 3, 32)
  assert clip.shape == (2, 32)
  np.testing.assert_allclose(clip, per_frame.mean(axis=1), rtol=1e-5, atol=1e-6)
  assert not np.allclose(per_frame[:, 0], per_frame[:, 1])  # the frames do differ
  # In training, BatchNorm's statistics are over every frame of the batch (frames folded in).
  _, updated = encoder.apply(variables, x, train=True, mutable=['batch_stats'])
  stem_conv = nn.Conv(4, (7, 7), strides=2, padding=3, use_bias=False)
  folded = stem_conv.apply({'params': variables['params']['stages_0']['stage']['Conv_0']},
                           x.reshape(6, 32, 32, 3))
  np.testing.assert_allclose(
      updated['batch_stats']['stages_0']['stage']['BatchNorm_0']['mean'],
      0.1 * folded.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_registered_as_built_ins_with_their_options():
  assert models.ENCODERS['resnet18_spectrogram'] is ResNet18Spectrogram
  assert models.ENCODERS['resnet18_frames'] is ResNet18Frames
  assert models.ENCODERS['resnet18_image'] is ResNet18Image
  assert models.encoder_config('resnet18_frames') == {
      'name': 'resnet18_frames', 'width': 64, 'features': None}
  assert models.build_encoder({'name': 'resnet18_spectrogram', 'width': 8}).stage_channels == (
      8, 8, 16, 32, 64)
  with pytest.raises(ValueError, match='taken'):
    models.register_encoder('resnet18_frames')(type('Mine', (nn.Module,), {}))


# ------------------------------------------------------------ inside the models, in training
AV = ('audio', 'visual')


@data.register('resnet_encoders_av', options={})
def build_audio_visual(seed):
  """Tiny spectrograms [17, 12] and clips of two 32x32 frames, three classes."""
  rng = np.random.default_rng(seed)

  def split(n):
    labels = np.arange(n) % 3
    audio = rng.normal(size=(n, 17, 12)) + labels[:, None, None]
    visual = rng.normal(size=(n, 2, 32, 32, 3)) - labels[:, None, None, None, None]
    return {'audio': audio, 'visual': visual}, labels

  return data.from_arrays({'train': split(8), 'val': split(4), 'test': split(4)},
                          name='resnet_encoders_av')


def audio_visual_config(method: str) -> ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.data = ml_collections.ConfigDict({'name': 'resnet_encoders_av'})
  config.model.encoders = {'audio': models.encoder_config('resnet18_spectrogram', width=4),
                           'visual': models.encoder_config('resnet18_frames', width=4)}
  config_lib.set_method(config, config_lib.parse_arg(f'method={method}',
                                                     **config_lib.common_args()))
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 4
  config.eval_batch_size = 4
  config.progress_bar = False
  return config


def test_mmtm_squeeze_of_frames_pools_over_frames_and_space():
  model = models.build_model(
      {'name': 'mmtm', 'encoders': audio_visual_config('greedy').model.encoders.to_dict()},
      AV, 3)
  assert model.mmtm_stages == (2, 3, 4)  # Wu et al.: after layer2, layer3, layer4
  dataset = build_audio_visual(0)
  inputs = {m: jnp.asarray(dataset.splits['train'].inputs[m][:4]) for m in AV}
  variables = model.init(key(2), inputs, train=False)
  _, state = model.apply(variables, inputs, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  found = state['intermediates']
  for i, stage in enumerate((2, 3, 4)):
    frames_map = found['encoders_visual'][f'stages_{stage}']['__call__'][0]
    audio_map = found['encoders_audio'][f'stages_{stage}']['__call__'][0]
    assert frames_map.ndim == 5 and audio_map.ndim == 4
    squeeze = found[f'mmtm_{i}']['squeeze_visual'][0]
    assert squeeze.shape == (4, 4 * 2 ** (stage - 1))
    np.testing.assert_allclose(squeeze, frames_map.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(found[f'mmtm_{i}']['squeeze_audio'][0],
                               audio_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_late_fusion_takes_both_encoders_512_features_each():
  config = audio_visual_config('vanilla')
  model = models.build_model(config.model.to_dict(), AV, 3)
  assert type(model).__name__ == 'LateFusionClassifier'
  inputs = {'audio': jax.ShapeDtypeStruct((2, 257, 188), jnp.float32),
            'visual': jax.ShapeDtypeStruct((2, 3, 224, 224, 3), jnp.float32)}
  full = models.build_model({'name': 'late_fusion', 'encoders': {
      'audio': models.encoder_config('resnet18_spectrogram'),
      'visual': models.encoder_config('resnet18_frames')}}, AV, 6)
  variables = jax.eval_shape(lambda x: full.init(key(0), x, train=False), inputs)
  # OGM's concat fusion: one Linear(1024, C) on [audio; visual].
  assert variables['params']['head_fused']['kernel'].shape == (1024, 6)
  outputs = jax.eval_shape(lambda v, x: full.apply(v, x, train=False), variables, inputs)
  assert {h: o.shape for h, o in outputs.items()} == {h: (2, 6) for h in ('fused', *AV)}


def test_greedy_mmtm_trains_with_one_compile():
  """Wu et al.'s MMTM model over both encoders, trained by the greedy method (its re-balancing
  flags are arrays of the step's state): both encoders learn, and the step compiles once."""
  config = audio_visual_config('greedy')
  trainer = train.Trainer(config)
  assert type(trainer.model).__name__ == 'MMTMClassifier'
  state = trainer.init_state()
  before = jax.device_get(state.params)
  for _ in range(3):
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    assert np.isfinite(float(step_metrics['loss/fused']))
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access
  after = jax.device_get(state.params)
  for m in AV:
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                         before[f'encoders_{m}'], after[f'encoders_{m}']))
    assert all(moved), m


def test_bfloat16_computes_the_encoders_in_bfloat16():
  for encoder, shape in ((ResNet18Spectrogram(width=4, dtype=jnp.bfloat16), (2, 17, 12)),
                         (ResNet18Frames(width=4, dtype=jnp.bfloat16), (2, 2, 16, 16, 3))):
    variables = abstract_variables(encoder, shape)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
    jaxpr = jax.make_jaxpr(lambda v, x, e=encoder: e.apply(v, x, train=True,
                                                           mutable=['batch_stats']))(
        variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
    assert len(convs) == 20
    assert {str(v.aval.dtype) for e in convs for v in e.invars} == {'bfloat16'}
    out, stats = jax.eval_shape(lambda v, x, e=encoder: e.apply(
        v, x, train=True, mutable=['batch_stats']), variables,
                                jax.ShapeDtypeStruct(shape, jnp.float32))
    assert out.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(stats)} == {jnp.dtype('float32')}
