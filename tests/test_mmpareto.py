"""MMPareto: formulas against hand-computed values, the integrated step, compile count, runs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_resume_is_bit_identical, sgd_synthetic_config, tiny_synthetic_config
from mmjax import metrics, step, train
from mmjax.methods import METHODS, mmpareto


def test_registered():
  assert METHODS['mmpareto'] is mmpareto.MMPareto


def _products(g_mm, g_u):
  g_mm, g_u = np.asarray(g_mm, np.float64), np.asarray(g_u, np.float64)
  return (jnp.float32(g_mm @ g_mm), jnp.float32(g_mm @ g_u), jnp.float32(g_u @ g_u))


def test_pareto_weights_two_vector_min_norm():
  # g_mm = (1, 0), g_u = (-1, 2): |a g_mm + (1-a) g_u|^2 = (2a - 1)^2 + (2 - 2a)^2,
  # derivative 4(2a - 1) - 4(2 - 2a) = 0 -> a = 3/4.
  a, b = mmpareto.pareto_weights(*_products([1, 0], [-1, 2]))
  assert (float(a), float(b)) == pytest.approx((0.75, 0.25))
  # minimum at g_mm's end (<g_mm, g_u> = 2 >= |g_mm|^2 = 1): the solver's 0.999
  assert float(mmpareto.pareto_weights(*_products([1, 0], [2, 0]))[0]) == pytest.approx(0.999)
  # minimum at g_u's end (<g_mm, g_u> = 2 >= |g_u|^2 = 1): 0.001
  assert float(mmpareto.pareto_weights(*_products([2, 0], [1, 0]))[0]) == pytest.approx(0.001)


def test_cosine_and_conflict_rule():
  assert float(mmpareto.cosine(*_products([1, 0], [-1, 2]))) == pytest.approx(-1 / math.sqrt(5))
  assert float(mmpareto.cosine(*_products([0, 0], [0, 0]))) == 0.0  # eps guard, no NaN
  # agreeing gradients: the plain (1/2, 1/2)
  agree = _products([1, 0], [0.5, 1])  # <.,.> = 0.5 > 0
  assert [float(w) for w in mmpareto.integration_weights(*agree)] == [0.5, 0.5]
  # 'pareto' always solves: a = (1.25 - 0.5) / (1 + 1.25 - 1) = 0.6
  assert [float(w) for w in mmpareto.integration_weights(*agree, integration='pareto')] == (
      pytest.approx([0.6, 0.4]))
  conflict = _products([1, 0], [-1, 2])
  assert [float(w) for w in mmpareto.integration_weights(*conflict)] == pytest.approx([0.75, 0.25])
  # exactly orthogonal (cos = 0) counts as a conflict, as in the official `cos > 0` test
  assert [float(w) for w in mmpareto.integration_weights(*_products([1, 0], [0, 2]))] == (
      pytest.approx([0.8, 0.2]))  # a = (4 - 0) / (1 + 4) = 0.8
  with pytest.raises(ValueError, match='method.integration'):
    mmpareto.integration_weights(*agree, integration='cagrad')


def test_integrate_rescales_per_tensor_then_gamma():
  g_mm, g_u = jnp.array([1.0, 0.0]), jnp.array([-1.0, 2.0])
  # h = 2 (0.75 (1, 0) + 0.25 (-1, 2)) = (1, 1), |h| = sqrt 2 < |g_mm + g_u| = |(0, 2)| = 2:
  # h -> (1, 1) * 2 / sqrt 2 = (sqrt 2, sqrt 2), times 1.5
  out = mmpareto.integrate(g_mm, g_u, 0.75, 0.25, gamma=1.5)
  np.testing.assert_allclose(out, [1.5 * math.sqrt(2)] * 2, rtol=1e-6)
  # |h| = |(1.8, 0.2)| = 1.811 > |(1, 1)| = 1.414: not shrunk, only times gamma
  out = mmpareto.integrate(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 0.9, 0.1, gamma=1.5)
  np.testing.assert_allclose(out, [2.7, 0.3], rtol=1e-6)
  # no conflict: h = g_mm + g_u exactly, enlarged by gamma
  out = mmpareto.integrate(jnp.array([1.0, 2.0]), jnp.array([3.0, 1.0]), 0.5, 0.5, gamma=1.5)
  np.testing.assert_allclose(out, [6.0, 4.5], rtol=1e-6)
  # h = 2 (0.75 (1, 0) + 0.25 (-3, 0)) = 0 while |g_mm + g_u| = 2: stays 0 (no NaN)
  out = mmpareto.integrate(jnp.array([1.0, 0.0]), jnp.array([-3.0, 0.0]), 0.75, 0.25, gamma=1.5)
  np.testing.assert_array_equal(out, [0.0, 0.0])
  out = mmpareto.integrate(g_mm, g_u, 0.75, 0.25, gamma=1.5, rescale='none')
  np.testing.assert_allclose(out, [1.0, 1.0], rtol=1e-6)


def test_encoder_inner_products_read_one_group():
  labels = {'enc_a': {'w': 'branch/a', 'b': 'branch/a'}, 'enc_b': {'w': 'branch/b'}}
  g_mm = {'enc_a': {'w': jnp.array([[1.0, 2.0]]), 'b': jnp.array([3.0])}, 'enc_b': {'w': jnp.ones(2)}}
  g_u = {'enc_a': {'w': jnp.array([[0.0, 1.0]]), 'b': jnp.array([-1.0])}, 'enc_b': {'w': jnp.ones(2)}}
  # (1, 2, 3) . (1, 2, 3) = 14, (1, 2, 3) . (0, 1, -1) = -1, (0, 1, -1) . (0, 1, -1) = 2
  products = mmpareto.encoder_inner_products(g_mm, g_u, labels, 'branch/a')
  assert [float(p) for p in products] == pytest.approx([14.0, -1.0, 2.0])


def _sgd_config(**method_options):
  return sgd_synthetic_config('mmpareto', **method_options)


def _numpy_integrate(g_mm, g_u, a_mm, a_u, gamma):
  h = 2 * (a_mm * g_mm + a_u * g_u)
  sum_norm, h_norm = np.linalg.norm(g_mm + g_u), np.linalg.norm(h)
  return gamma * h * max(sum_norm / h_norm, 1.0)


@pytest.mark.parametrize('integration', ['mmpareto', 'pareto'])
def test_step_integrates_each_encoder_from_separate_loss_gradients(integration):
  """SGD without momentum: the step's update is -lr times the gradient assembled here with
  jax.grad of each head's loss separately and the rule in numpy."""
  trainer = train.Trainer(_sgd_config(integration=integration))
  state, batch = trainer.init_state(), trainer.next_batch()

  def loss_of(head):
    def f(params):
      outputs, _, _ = step.forward(trainer.model, params, state.model_state, batch['inputs'],
                                   train=True)
      return step.cross_entropy(outputs[head], batch['label']).mean()
    return jax.device_get(jax.grad(f)(state.params))

  grads = {h: loss_of(h) for h in ('fused', 'a', 'b')}
  expected, cosines = {}, {}
  for top in state.params:
    if top.startswith('encoders_'):
      m = top[-1]
      mm = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads['fused'][top])]
      u = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads[m][top])]
      mm_mm = sum((x * x).sum() for x in mm)
      mm_u = sum((x * y).sum() for x, y in zip(mm, u))
      u_u = sum((y * y).sum() for y in u)
      cosines[m] = mm_u / math.sqrt(mm_mm * u_u)
      a = min(max((u_u - mm_u) / (mm_mm + u_u - 2 * mm_u), 0.001), 0.999)
      if integration == 'mmpareto' and cosines[m] > 0:
        a = 0.5
      expected[top] = [_numpy_integrate(x, y, a, 1 - a, 1.5) for x, y in zip(mm, u)]
    else:
      expected[top] = [sum(np.asarray(x, np.float64) for x in leaves) for leaves in
                       zip(*(jax.tree.leaves(grads[h][top]) for h in grads))]
  new, step_metrics = trainer.jit_train_step(state, batch)
  for m in 'ab':
    assert float(step_metrics[f'mmpareto/cosine/{m}']) == pytest.approx(cosines[m], rel=1e-4,
                                                                       abs=1e-6)
  for top in state.params:
    for p0, p1, g in zip(jax.tree.leaves(state.params[top]), jax.tree.leaves(new.params[top]),
                         expected[top]):
      np.testing.assert_allclose(np.asarray(p0 - p1) / 0.1, g, rtol=2e-4, atol=1e-6)


def test_compiles_once_whatever_the_conflicts(tmp_path):
  trainer = train.Trainer(_sgd_config())
  state = trainer.init_state()
  conflicts = []
  for _ in range(trainer.steps_per_epoch + 2):
    state, step_metrics = trainer.jit_train_step(state, trainer.next_batch())
    conflicts.append(float(step_metrics['mmpareto/conflict/a']))
  assert set(conflicts) <= {0.0, 1.0}
  assert trainer.jit_train_step._cache_size() == 1  # pylint: disable=protected-access


def test_train_and_evaluate_logs_and_resumes_identically(tmp_path):
  config = tiny_synthetic_config('mmpareto')
  full, _ = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  records = metrics.select(metrics.read_metrics(full), 'train')
  assert len(records) == 2
  for r in records:
    for m in 'ab':
      assert -1 <= r[f'mmpareto/cosine/{m}'] <= 1
      assert 0 <= r[f'mmpareto/conflict/{m}'] <= 1
      assert 0.001 - 1e-6 <= r[f'mmpareto/multimodal_weight/{m}'] <= 0.999 + 1e-6
  summary = metrics.read_summary(full)
  assert summary['method'] == 'mmpareto' and summary['finished']


def test_bad_options_and_models_are_refused():
  for options, match in (({'gamma': -1.0}, 'method.gamma'),
                         ({'integration': 'cagrad'}, 'method.integration'),
                         ({'rescale': 'global'}, 'method.rescale')):
    with pytest.raises(ValueError, match=match):
      train.Trainer(tiny_synthetic_config('mmpareto', **options))
  config = tiny_synthetic_config('mmpareto')
  config.model = {'name': 'mmtm', 'encoders': config.model.encoders.to_dict(), 'mmtm_stages': (),
                  'mmtm_ratio': 4, 'dtype': 'float32'}
  with pytest.raises(ValueError, match='without fusion layers'):
    train.Trainer(config)
