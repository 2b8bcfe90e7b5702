"""Mixed precision (issue 12, item 7): ``model.dtype = 'bfloat16'`` computes in bfloat16 while
parameters, BatchNorm statistics, logits and losses stay float32; ``'float32'`` is unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_synthetic_config
from mmjax import config_lib, main, models, train

MODALITIES = ('a', 'b')
TINY = {'mlp': {'hidden': [8], 'features': 8}, 'cnn': {'features': 8},
        'resnet18': {'width': 4, 'features': 8}}


def build(encoder: str, model: str, dtype: str | None) -> nn.Module:
  config = {'name': model,
            'encoders': {m: models.encoder_config(encoder, **TINY[encoder]) for m in MODALITIES}}
  if model == 'mmtm':
    config.update(mmtm_stages=(), mmtm_ratio=4)
  if dtype is not None:
    config['dtype'] = dtype
  return models.build_model(config, MODALITIES, 3)


def key(seed: int) -> jax.Array:
  # 'rbg' keys compile initialisers faster on the CPU (as tests/test_models.py).
  return jax.random.key(seed, impl='rbg')


def example_inputs(seed: int = 0) -> dict[str, jax.Array]:
  rng = np.random.default_rng(seed)
  return {m: jnp.asarray(rng.normal(size=(4, 8, 8, 1)), jnp.float32) for m in MODALITIES}


def matmul_and_conv_dtypes(model: nn.Module, variables, inputs) -> list[str]:
  """The input dtypes of every dot product and convolution of a training forward pass."""
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates']))(variables, inputs)
  found = []

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
        found.extend(str(v.aval.dtype) for v in eqn.invars)
      for param in eqn.params.values():  # the bodies of nested jits and custom derivatives
        if hasattr(param, 'eqns'):
          visit(param)
        elif hasattr(getattr(param, 'jaxpr', None), 'eqns'):
          visit(param.jaxpr)

  visit(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize('encoder,model_name', [
    ('mlp', 'late_fusion'), ('mlp', 'mmtm'), ('cnn', 'late_fusion'), ('resnet18', 'mmtm')])
def test_bfloat16_computes_in_bfloat16_with_float32_state(encoder, model_name):
  inputs = example_inputs()
  float32_model = build(encoder, model_name, None)
  bfloat16_model = build(encoder, model_name, 'bfloat16')
  variables = models.init_variables(bfloat16_model, key(0), inputs)
  # The same parameter tree whatever the dtype, all float32 (BatchNorm statistics included).
  assert jax.tree.structure(variables) == jax.tree.structure(jax.eval_shape(
      lambda x: float32_model.init(key(0), x, train=False), inputs))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  # Every matmul and convolution (encoders, MMTM, heads) runs on bfloat16 operands ...
  assert set(matmul_and_conv_dtypes(bfloat16_model, variables, inputs)) == {'bfloat16'}
  assert set(matmul_and_conv_dtypes(float32_model, variables, inputs)) == {'float32'}
  outputs, mutated = jax.eval_shape(lambda v, x: bfloat16_model.apply(
      v, x, train=True, mutable=['batch_stats', 'intermediates']), variables, inputs)
  # ... and the logits, the updated BatchNorm statistics and MMTM's sown values are float32.
  assert {o.dtype for o in outputs.values()} == {jnp.dtype('float32')}
  assert {x.dtype for x in jax.tree.leaves(mutated)} <= {jnp.dtype('float32')}
  # Same parameters: logits within bfloat16's precision (8 bits of mantissa, a few layers deep).
  # Compared with running statistics: batch statistics over 4 examples of a 1x1 map (ResNet's
  # layer4 here) would amplify any rounding, in float32 as in bfloat16.
  outputs = jax.jit(lambda v, x: bfloat16_model.apply(v, x, train=False))(variables, inputs)
  reference = jax.jit(lambda v, x: float32_model.apply(v, x, train=False))(variables, inputs)
  for head, logits in reference.items():
    scale = float(jnp.abs(logits).max()) + 1e-3
    np.testing.assert_allclose(outputs[head], logits, atol=0.05 * scale, err_msg=head)
    assert not np.array_equal(outputs[head], logits), head  # it did compute in bfloat16


def test_float32_is_the_default_and_the_unchanged_model():
  inputs = example_inputs()
  default, explicit = build('cnn', 'mmtm', None), build('cnn', 'mmtm', 'float32')
  variables = models.init_variables(default, key(1), inputs)
  jaxpr = str(jax.make_jaxpr(lambda v, x: default.apply(v, x, train=False))(variables, inputs))
  assert 'bf16' not in jaxpr and 'convert_element_type' not in jaxpr
  assert jaxpr == str(jax.make_jaxpr(lambda v, x: explicit.apply(v, x, train=False))(
      variables, inputs))
  # Encoders built for float32 keep Flax's dtype=None: their config sections are unchanged.
  assert all(e.dtype is None for e in default.encoders.values())
  assert 'dtype' not in models.encoder_config('mlp')
  assert 'dtype' not in models.describe(models.MLPEncoder())


@pytest.mark.parametrize('method', ['vanilla', 'greedy'])
def test_bfloat16_run_trains_without_recompiling(method):
  config = tiny_synthetic_config(method)
  config.model.dtype = 'bfloat16'
  trainer = train.Trainer(config)
  state = trainer.init_state()
  batch = trainer.next_batch()
  losses = []
  for _ in range(30):
    state, step_metrics = trainer.jit_train_step(state, batch)
    losses.append(float(step_metrics['loss/fused']))
    assert step_metrics['loss/fused'].dtype == jnp.float32
  assert losses[-1] < 0.7 * losses[0], losses
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype('float32')}
  assert {x.dtype for x in jax.tree.leaves(state.opt_state) if hasattr(x, 'dtype')
          and jnp.issubdtype(x.dtype, jnp.floating)} == {jnp.dtype('float32')}


def test_user_encoder_gets_the_dtype_only_if_it_declares_the_field():

  class WithDtype(nn.Module):
    features: int = 4
    dtype: object = None

    @nn.compact
    def __call__(self, x, *, train):
      return nn.Dense(self.features, dtype=self.dtype)(x.reshape(x.shape[0], -1))

  class WithoutDtype(nn.Module):
    features: int = 4

    @nn.compact
    def __call__(self, x, *, train):
      return nn.Dense(self.features)(x.reshape(x.shape[0], -1))

  model = models.build_model({'name': 'late_fusion', 'dtype': 'bfloat16', 'encoders': {}},
                             MODALITIES, 3, encoders={'a': WithDtype(), 'b': WithoutDtype()})
  assert model.encoders['a'].dtype == jnp.bfloat16
  inputs = {m: jnp.ones((2, 5)) for m in MODALITIES}
  variables = models.init_variables(model, key(0), inputs)
  # a's Dense, b's Dense (float32, it has no dtype), then the three heads in bfloat16.
  dtypes = matmul_and_conv_dtypes(model, variables, inputs)
  assert dtypes.count('float32') == 2 and dtypes.count('bfloat16') == 8, dtypes


def test_dtype_is_a_model_option_not_an_encoder_option():
  with pytest.raises(ValueError, match=r"'dtype' is set for the whole model.*model\.dtype"):
    models.build_encoder({'name': 'mlp', 'dtype': 'bfloat16'})
  with pytest.raises(ValueError, match=r"model\.dtype = 'float16' is not a compute dtype; valid "
                                       r"dtypes are \['float32', 'bfloat16'\]"):
    build('mlp', 'mmtm', 'float16')


def test_bad_dtype_on_the_command_line_is_one_line(tmp_path, capsys):
  workdir = tmp_path / 'run'
  code = main.main(['--config', 'configs/synthetic.py:smoke', '--config.model.dtype=float16',
                    '--workdir', str(workdir)])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2
  assert err[-1].endswith("model.dtype = 'float16' is not a compute dtype; valid dtypes are "
                          "['float32', 'bfloat16'].")
  assert not any('Traceback' in line for line in err)
  assert not workdir.exists() or not any(workdir.iterdir())


def test_a_run_from_before_model_dtype_resumes_as_float32():
  old = config_lib.to_dict(tiny_synthetic_config())
  del old['model']['dtype']  # config.json of a run started before the key existed
  assert config_lib.resume_changes(old, config_lib.to_dict(tiny_synthetic_config())) == []
  bfloat16 = tiny_synthetic_config()
  bfloat16.model.dtype = 'bfloat16'
  with pytest.raises(config_lib.UserError, match=r"model\.dtype: 'float32' -> 'bfloat16'"):
    config_lib.resume_changes(old, config_lib.to_dict(bfloat16))
