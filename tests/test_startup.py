"""Start-up: the persistent compilation cache (on by default, movable, off) and the initial
train state (one compiled function, the same bits as the model's own ``jit(model.init)``)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import compilation_cache, models, train
from mmjax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = compilation_cache.ENV


@pytest.mark.parametrize('value, xdg, expected', [
    (None, '/xdg', '/xdg/mmjax/jax'),
    (None, None, '{home}/.cache/mmjax/jax'),
    ('/elsewhere/cache', '/xdg', '/elsewhere/cache'),
    ('~/c', None, '{home}/c'),
    ('off', '/xdg', None), ('0', None, None), ('OFF', None, None), ('', None, None),
])
def test_cache_folder_from_the_environment(monkeypatch, tmp_path, value, xdg, expected):
  monkeypatch.setenv('HOME', str(tmp_path))
  for name, set_to in ((ENV, value), ('XDG_CACHE_HOME', xdg)):
    if set_to is None:
      monkeypatch.delenv(name, raising=False)
    else:
      monkeypatch.setenv(name, set_to)
  assert compilation_cache.cache_dir() == (expected and expected.format(home=tmp_path))


@pytest.fixture
def no_cache_configured():
  """JAX's cache folder unset for the test (the session's is restored after)."""
  configured = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', None)
  yield
  jax.config.update('jax_compilation_cache_dir', configured)


def test_a_folder_that_cannot_be_made_is_one_clear_error(monkeypatch, tmp_path,
                                                         no_cache_configured, tiny_config):
  del no_cache_configured
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  monkeypatch.setenv(ENV, str(blocker / 'cache'))
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=(
      rf"MMJAX_COMPILATION_CACHE='{blocker}/cache': the compilation cache folder "
      rf"'{blocker}/cache' cannot be created \(Not a directory\); set MMJAX_COMPILATION_CACHE "
      r'to a writable folder, or to off.')):
    train.train_and_evaluate(tiny_config(), str(workdir))
  assert not workdir.exists()
  assert jax.config.jax_compilation_cache_dir is None


def test_an_unusable_default_folder_is_a_warning_and_no_cache(monkeypatch, tmp_path,
                                                              no_cache_configured):
  del no_cache_configured
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  monkeypatch.delenv(ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(blocker))  # the default folder lies under a file
  assert compilation_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir is None


def test_off_and_a_folder_set_through_jax_leave_jax_alone(monkeypatch, tmp_path,
                                                          no_cache_configured):
  del no_cache_configured
  monkeypatch.setenv(ENV, 'off')
  assert compilation_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir is None
  jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'own'))
  monkeypatch.setenv(ENV, str(tmp_path / 'mmjax'))
  assert compilation_cache.enable() == str(tmp_path / 'own')
  assert not (tmp_path / 'mmjax').exists()


def test_a_second_cli_start_reads_its_compiled_functions_from_the_default_folder(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != ENV}
  env.update(XDG_CACHE_HOME=str(tmp_path / 'xdg'), JAX_LOG_COMPILES='1', PYTHONPATH=ROOT)
  hits = []
  for run in ('first', 'second'):
    result = subprocess.run(
        [sys.executable, '-m', 'mmjax.main', '--config', 'configs/synthetic.py:smoke',
         '--workdir', str(tmp_path / run), '--config.num_epochs=1',
         '--config.progress_bar=False'], cwd=ROOT, env=env, capture_output=True, text=True,
        check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    hits.append([name for name in ('jit__initial_state', 'jit_train_step', 'jit_eval_step')
                 if f"Persistent compilation cache hit for '{name}'" in result.stderr])
  assert hits == [[], ['jit__initial_state', 'jit_train_step', 'jit_eval_step']]
  assert os.listdir(tmp_path / 'xdg' / 'mmjax' / 'jax')


@pytest.mark.parametrize('method', ['uniform', 'greedy'])  # late fusion; MMTM, a method state
def test_initial_state_is_the_models_own_init_bit_for_bit(tiny_config, method):
  config = tiny_config(method)
  trainer = train.Trainer(config)
  state = jax.device_get(trainer.init_state())
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  example = {m: jnp.zeros((1, *s), jnp.float32) for m, s in trainer.input_shapes.items()}
  variables = dict(models.init_variables(trainer.model, init_rng, example))
  params = variables.pop('params')
  expected = train.TrainState(step=jnp.int32(0), params=params, model_state=variables,
                              opt_state=trainer.tx.init(params),
                              method_state=trainer.method.init_state(), rng=state_rng)
  assert jax.tree.structure(state) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(jax.device_get(expected))):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(state.params))
