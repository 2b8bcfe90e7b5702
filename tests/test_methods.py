"""The weighting rule shared by all methods, and the four baseline methods."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import methods
from mmjax.methods.base import blended_loss, head_grad_scales, probe_objective

HEADS = ('fused', 'a', 'b')


def test_probe_objective_and_blended_loss_by_hand():
  losses = {'fused': jnp.float32(2.0), 'a': jnp.float32(3.0), 'b': jnp.float32(5.0)}
  weights = {'fused': jnp.float32(0.5), 'a': jnp.float32(0.0), 'b': jnp.float32(0.25)}
  # weighted heads: 0.5*2 + 0.25*5; the probe head 'a' adds its plain loss 3.
  assert float(probe_objective(losses, weights)) == pytest.approx(0.5 * 2 + 3 + 0.25 * 5)
  assert float(blended_loss(losses, weights)) == pytest.approx(0.5 * 2 + 0.25 * 5)
  scales = head_grad_scales(weights)
  assert [float(scales[h]) for h in HEADS] == [1.0, 0.0, 1.0]


@pytest.mark.parametrize('name, expected', [
    ('vanilla', {'fused': 1.0, 'a': 0.0, 'b': 0.0}),
    ('uniform', {'fused': 1.0, 'a': 1.0, 'b': 1.0}),
])
def test_baseline_weights(name, expected):
  method = methods.build_method(methods.method_config(name), HEADS, ('a', 'b'))
  state = method.init_state()
  assert {h: float(w) for h, w in state['weights'].items()} == expected


def test_fixed_weights_and_errors():
  config = methods.method_config('fixed', weights={'fused': 0.5, 'a': 0.25, 'b': 0.0})
  method = methods.build_method(config, HEADS, ('a', 'b'))
  assert {h: float(w) for h, w in method.init_state()['weights'].items()} == {
      'fused': 0.5, 'a': 0.25, 'b': 0.0}
  bad = [({'fused': 1.0, 'c': 1.0}, "no head named 'c'; valid heads are"),
         ({'fused': -1.0}, r'method.weights.fused = -1.0'),
         ({'fused': float('nan')}, r'method.weights.fused = nan'),
         ({'fused': 0.0}, 'at least one head needs a positive weight'),
         ({}, 'method.weights is empty')]
  for weights, match in bad:
    with pytest.raises(ValueError, match=match):
      methods.build_method(methods.method_config('fixed', weights=weights), HEADS, ('a', 'b'))


def test_unimodal_model_modalities():
  cls = methods.get_method_class('unimodal')
  assert cls.model_modalities({'modality': 'b'}, ('a', 'b')) == ('b',)
  with pytest.raises(ValueError, match=r"method.modality = 'c'.*\['a', 'b'\]"):
    cls.model_modalities({'modality': 'c'}, ('a', 'b'))
  method = methods.build_method(methods.method_config('unimodal', modality='b'), ('fused', 'b'), ('b',))
  assert method.selection_head == 'b'
  assert {h: float(w) for h, w in method.init_state()['weights'].items()} == {'fused': 0.0, 'b': 1.0}


def test_method_config_errors():
  with pytest.raises(ValueError, match="method.name = 'nope' is not a method"):
    methods.method_config('nope')
  with pytest.raises(ValueError, match="method.bogus is not an option of method 'vanilla'"):
    methods.build_method({'name': 'vanilla', 'bogus': 1}, HEADS, ('a', 'b'))


def test_probe_heads_do_not_move_encoders():
  """Vanilla's encoder gradient equals the fused loss's alone; probe heads still learn."""
  from mmjax import models  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from mmjax.step import head_losses  # pylint: disable=import-outside-toplevel

  model_config = ml_collections.ConfigDict({
      'name': 'late_fusion', 'fusion': 'concat', 'fused_hidden': (), 'fused_dropout': 0.0,
      'encoders': {m: {'name': 'mlp', 'hidden': (8,), 'features': 4} for m in ('a', 'b')}})
  model = models.build_model(model_config, ('a', 'b'), 3)
  rng = np.random.default_rng(0)
  inputs = {m: jnp.asarray(rng.normal(size=(6, 5)), jnp.float32) for m in ('a', 'b')}
  labels = jnp.asarray(rng.integers(0, 3, size=6))
  params = model.init(jax.random.PRNGKey(0), inputs, train=False)['params']
  method = methods.build_method(methods.method_config('vanilla'), HEADS, ('a', 'b'))
  state = method.init_state()

  def vanilla_loss(p):
    out = model.apply({'params': p}, inputs, train=False,
                      **method.model_kwargs(state, jax.random.PRNGKey(1)))
    return method.objective(head_losses(out, labels), state)

  def fused_only(p):
    out = model.apply({'params': p}, inputs, train=False)
    return head_losses(out, labels)['fused']

  g_vanilla, g_fused = jax.grad(vanilla_loss)(params), jax.grad(fused_only)(params)
  enc_keys = [k for k in params if k not in ('head_a', 'head_b', 'head_fused')]
  assert enc_keys
  leaves = lambda t: jax.tree.leaves(t)  # noqa: E731
  for k in params:
    if 'head' in k and k != 'head_fused' and k.endswith(('_a', '_b')):
      assert any(float(jnp.abs(x).sum()) > 0 for x in leaves(g_vanilla[k]))  # probes learn
  for a_, b_ in zip(leaves({k: g_vanilla[k] for k in enc_keys if 'head' not in k}),
                    leaves({k: g_fused[k] for k in enc_keys if 'head' not in k})):
    np.testing.assert_allclose(a_, b_, rtol=1e-5, atol=1e-7)
