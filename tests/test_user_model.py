"""A user's own encoders (defined in this file) trained by G-Blend and greedy learning.

Each encoder goes in once registered by name and once as an object from Python, end to end
through ``train_and_evaluate`` (greedy by name: the example of ``docs/your_model.md``, run last); then the contract errors, the config arguments that switch an
encoder's type in every config file, and ``parameter_groups`` on models of user encoders.
"""

from __future__ import annotations

import json
import os
import runpy
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_synthetic_config
from mmjax import main, metrics, models, train
from mmjax.errors import UserError

HEADS = ('fused', 'a', 'b')


class TinyEncoder(nn.Module):
  """A plain encoder: features out, no stages (late fusion only). Not registered."""
  features: int = 8

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))


class DenseReLU(nn.Module):
  """One stage of :class:`TinyStagedEncoder`."""
  width: int

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return nn.relu(nn.Dense(self.width)(x))


@models.register_encoder('test_tiny_staged')
class TinyStagedEncoder(nn.Module):
  """A staged encoder written against the contract alone (no mmjax base class)."""
  widths: tuple = (8, 6)
  features: int = 8

  @property
  def stage_channels(self):
    return tuple(self.widths)

  def setup(self):
    self.stages = tuple(DenseReLU(w) for w in self.widths)
    self.project = nn.Dense(self.features)

  def embed(self, x, *, train):
    del train
    return self.project(x)

  def __call__(self, x, *, train):
    for stage in self.stages:
      x = stage(x, train=train)
    return self.embed(x, train=train)


class TinyStagedObject(TinyStagedEncoder):
  """The same encoder under a class that is not registered: it can only be passed as an object."""


def _small(config):
  config.data.num_train = 128
  return config


def _small_gblend():
  config = _small(tiny_synthetic_config('gblend'))
  config.method.warmup_epochs = 1
  config.method.super_epoch = 1
  config.num_epochs = 2
  return config


def _small_greedy():
  config = _small(tiny_synthetic_config('greedy', mode='guided'))
  config.num_epochs = 2
  return config


def _stored_config(workdir):
  with open(os.path.join(workdir, 'config.json'), encoding='utf-8') as f:
    return json.load(f)


def _check_trained(workdir, method):
  records = metrics.read_metrics(workdir)
  assert max(r['epoch'] for r in records) == 2
  test = [r for r in records if r['split'] == 'test']
  assert all(np.isfinite(r[f'accuracy/{h}']) for r in test for h in HEADS)
  keys = set().union(*records)
  assert any(k.startswith(f'{method}/') for k in keys), sorted(keys)


# ----- end to end: G-Blend (late fusion) and greedy (MMTM) ----------------------------------

def test_gblend_with_a_registered_encoder(tmp_path):
  config = _small_gblend()
  for m in ('a', 'b'):
    config.model.encoders[m] = models.encoder_config('test_tiny_staged', features=6)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  _check_trained(workdir, 'gblend')
  assert _stored_config(workdir)['model']['encoders']['a'] == {
      'name': 'test_tiny_staged', 'widths': [8, 6], 'features': 6}
  weights = [r['gblend/weight/a'] for r in metrics.read_metrics(workdir) if 'gblend/weight/a' in r]
  assert weights and all(np.isfinite(weights))


def test_gblend_with_encoder_objects_records_them_and_refuses_other_objects(tmp_path):
  config = _small(tiny_synthetic_config('gblend', estimator='gradient'))
  encoders = {'a': TinyEncoder(features=6), 'b': TinyEncoder(features=5)}
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, encoders=encoders, stop_after_epoch=1)
  stored = _stored_config(workdir)['model']['encoders']
  assert stored['a'] == {'name': '<object>', 'class': f'{__name__}.TinyEncoder', 'features': 6}
  assert stored['b']['features'] == 5
  assert config.model.encoders.a.name == 'mlp'  # the caller's config is left alone
  with pytest.raises(UserError, match=r'model\.encoders\.b\.features: 5 -> 7'):
    train.train_and_evaluate(config, workdir, encoders={'a': TinyEncoder(6), 'b': TinyEncoder(7)})
  with pytest.raises(UserError, match=r"model\.encoders\.a\.name: '<object>' -> 'mlp'"):
    train.train_and_evaluate(config, workdir)
  train.train_and_evaluate(config, workdir, encoders=encoders)  # equal objects resume
  _check_trained(workdir, 'gblend')


def test_greedy_with_staged_encoder_objects(tmp_path):
  config = _small_greedy()
  encoders = {'a': TinyStagedObject(widths=(8, 4), features=6), 'b': TinyStagedObject()}
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, encoders=encoders)
  _check_trained(workdir, 'greedy')
  stored = _stored_config(workdir)['model']['encoders']['a']
  assert stored == {'name': '<object>', 'class': f'{__name__}.TinyStagedObject',
                    'widths': [8, 4], 'features': 6}


# ----- the contract, checked when the model is built --------------------------------------

def test_unstaged_encoder_for_mmtm_says_what_is_missing():
  config = _small_greedy()
  with pytest.raises(ValueError) as error:
    train.Trainer(config, encoders={'a': TinyEncoder(), 'b': TinyStagedObject()})
  message = str(error.value)
  assert '\n' not in message
  assert f'model.encoders.a ({__name__}.TinyEncoder) is not a staged encoder' in message
  assert 'it lacks stage_channels, stages, embed' in message
  assert 'docs/your_model.md' in message


def test_unknown_encoder_name_lists_the_valid_ones_registered_included():
  with pytest.raises(ValueError) as error:
    models.build_model({'name': 'late_fusion', 'encoders': {'a': {'name': 'vit'}}}, ('a',), 3)
  assert "model.encoders.a: encoder name 'vit' is not an encoder" in str(error.value)
  assert "'test_tiny_staged'" in str(error.value) and "'mlp'" in str(error.value)


def test_bad_option_of_a_registered_encoder_names_its_options():
  with pytest.raises(ValueError) as error:
    models.build_model({'name': 'late_fusion',
                        'encoders': {'a': {'name': 'test_tiny_staged', 'depth': 2}}}, ('a',), 3)
  assert ("model.encoders.a: 'depth' is not an option of encoder 'test_tiny_staged'; its "
          "options are ['widths', 'features']") in str(error.value)


def test_encoder_that_is_not_a_module_or_takes_no_train_is_refused():
  class NoTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(x)

  with pytest.raises(ValueError,
                     match=r'model\.encoders\.a is a function, not a flax\.linen Module'):
    models.config_with_objects(tiny_synthetic_config(), encoders={'a': lambda x: x})
  with pytest.raises(ValueError, match=r'__call__ has no keyword argument train'):
    models.build_model({'name': 'late_fusion', 'encoders': {}}, ('a',), 3,
                       encoders={'a': NoTrain()})


def test_encoder_returning_a_map_is_refused_by_late_fusion():
  class MapEncoder(nn.Module):
    @nn.compact
    def __call__(self, x, *, train):
      return nn.Dense(2)(x)[:, None, :]

  model = models.build_model({'name': 'late_fusion', 'encoders': {}}, ('a',), 3,
                             encoders={'a': MapEncoder()})
  with pytest.raises(ValueError, match=r"modality 'a' \(MapEncoder\) returned shape \(2, 1, 2\); "
                     r'late fusion needs \[batch, features\]'):
    model.init(jax.random.PRNGKey(0), {'a': jnp.zeros((2, 4))}, train=False)


def test_stage_channels_that_do_not_match_the_stage_output_are_refused():
  class WrongChannels(TinyStagedObject):
    @property
    def stage_channels(self):
      return (8, 5)

  model = models.build_model({'name': 'mmtm', 'encoders': {}, 'mmtm_stages': (1,)}, ('a', 'b'), 3,
                             encoders={'a': WrongChannels(), 'b': TinyStagedObject()})
  with pytest.raises(ValueError, match=r'stage 1 returned shape \(2, 6\), but its '
                     r'stage_channels\[1\] = 5'):
    model.init(jax.random.PRNGKey(0), {m: jnp.zeros((2, 4)) for m in 'ab'}, train=False)


def test_register_encoder_refuses_taken_names_and_options_without_defaults():
  with pytest.raises(ValueError,
                     match=r"the name 'mlp' is taken by mmjax\.models\.encoders\.MLPEncoder"):
    models.register_encoder('mlp')(TinyEncoder)

  class NoDefault(nn.Module):
    width: int

  with pytest.raises(TypeError, match=r"option 'width' of .*NoDefault has no default"):
    models.register_encoder('test_no_default')(NoDefault)
  assert 'test_no_default' not in models.ENCODERS


# ----- parameter groups of models built from user encoders ---------------------------------

def _labels_by_path(model, inputs):
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                          inputs)['params']
  labels = model.parameter_groups(params)
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): label
          for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}


def test_parameter_groups_of_late_fusion_over_user_encoders():
  model = models.build_model({'name': 'late_fusion', 'encoders': {}, 'fused_hidden': (4,)},
                             ('a', 'b'), 3, encoders={'a': TinyEncoder(), 'b': TinyStagedObject()})
  labels = _labels_by_path(model, {m: jnp.zeros((2, 4)) for m in 'ab'})
  assert labels == {
      'encoders_a/Dense_0/bias': 'branch/a', 'encoders_a/Dense_0/kernel': 'branch/a',
      'encoders_b/stages_0/Dense_0/bias': 'branch/b', 'encoders_b/stages_0/Dense_0/kernel': 'branch/b',
      'encoders_b/stages_1/Dense_0/bias': 'branch/b', 'encoders_b/stages_1/Dense_0/kernel': 'branch/b',
      'encoders_b/project/bias': 'branch/b', 'encoders_b/project/kernel': 'branch/b',
      'fused_mlp_0/bias': 'head/fused', 'fused_mlp_0/kernel': 'head/fused',
      'head_fused/bias': 'head/fused', 'head_fused/kernel': 'head/fused',
      'head_a/bias': 'head/a', 'head_a/kernel': 'head/a',
      'head_b/bias': 'head/b', 'head_b/kernel': 'head/b'}


def test_parameter_groups_of_mmtm_over_user_encoders():
  model = models.build_model({'name': 'mmtm', 'encoders': {}, 'mmtm_stages': (1,)}, ('a', 'b'), 3,
                             encoders={'a': TinyStagedObject(), 'b': TinyStagedObject((5, 3))})
  labels = _labels_by_path(model, {m: jnp.zeros((2, 4)) for m in 'ab'})
  assert {p: g for p, g in labels.items() if p.startswith('mmtm_')} == {
      'mmtm_0/squeeze/bias': 'fusion', 'mmtm_0/squeeze/kernel': 'fusion',
      'mmtm_0/excite_a/bias': 'fusion/a', 'mmtm_0/excite_a/kernel': 'fusion/a',
      'mmtm_0/excite_b/bias': 'fusion/b', 'mmtm_0/excite_b/kernel': 'fusion/b'}
  assert all(g == 'branch/b' for p, g in labels.items() if p.startswith('encoders_b/'))
  assert sum(p.startswith('encoders_b/') for p in labels) == 6
  assert {g for p, g in labels.items() if p.startswith('head_')} == {'head/a', 'head/b'}


def test_check_parameter_groups_refuses_bad_labels():
  params = {'enc': {'w': jnp.zeros(2)}, 'out': {'w': jnp.zeros(2)}}
  with pytest.raises(ValueError, match=r"label 'encoder/a' is not a group"):
    models.check_parameter_groups({'enc': {'w': 'encoder/a'}, 'out': {'w': 'head/a'}}, params,
                                  ('a',), ('fused', 'a'))
  with pytest.raises(ValueError, match=r"no parameter is labelled 'branch/a'"):
    models.check_parameter_groups({'enc': {'w': 'head/fused'}, 'out': {'w': 'head/a'}}, params,
                                  ('a',), ('fused', 'a'))
  models.check_parameter_groups({'enc': {'w': 'branch/a'}, 'out': {'w': 'head/a'}}, params,
                                ('a',), ('fused', 'a'))


def test_describe_records_class_fields_submodules_and_functions():
  class Activated(nn.Module):
    activation: object = nn.gelu
    kernel_init: object = nn.initializers.lecun_normal()

  model = models.LateFusionClassifier(
      encoders={'a': TinyEncoder(3), 'b': models.MLPEncoder(hidden=(4,))}, num_classes=2)
  assert models.describe(model) == {
      'name': '<object>', 'class': 'mmjax.models.late_fusion.LateFusionClassifier',
      'encoders': {'a': {'name': '<object>', 'class': f'{__name__}.TinyEncoder', 'features': 3},
                   'b': {'name': 'mlp', 'hidden': [4], 'features': 128, 'dropout': 0.0}},
      'num_classes': 2, 'fusion': 'concat', 'fused_hidden': [], 'fused_dropout': 0.0,
      'dtype': 'float32'}
  described = models.describe(Activated())
  assert described['activation'] == 'jax._src.nn.functions.gelu'
  # An initializer is a closure: the values it closes over tell lecun_normal from he_normal.
  he = models.describe(Activated(kernel_init=nn.initializers.he_normal()))['kernel_init']
  assert described['kernel_init']['closure'] != he['closure']
  assert described['kernel_init']['closure'] == models.describe(Activated())['kernel_init']['closure']


def test_builtin_mmtm_model_passed_whole_is_used_by_greedy():
  model = models.MMTMClassifier(encoders={'a': TinyStagedObject(), 'b': TinyStagedObject()},
                                num_classes=4, mmtm_stages=(1,))
  trainer = train.Trainer(_small_greedy(), model=model)
  assert trainer.model is model
  assert trainer.method.mmtm_channels == ({'a': 6, 'b': 6},)
  assert tuple(trainer.config.model.mmtm_stages) == (1,)
  assert trainer.config.model['class'] == 'mmjax.models.mmtm.MMTMClassifier'


# ----- a whole model of the user's ---------------------------------------------------------

class SumOfHeads(nn.Module):
  """A whole model written from scratch: two encoders, a head each, the fused head their sum."""
  features: int = 6
  num_classes: int = 4

  heads = ('fused', 'a', 'b')

  @nn.compact
  def __call__(self, inputs, *, train, head_grad_scale=None):
    scales = head_grad_scale or {}
    logits = {}
    for m in ('a', 'b'):
      features = nn.relu(nn.Dense(self.features, name=f'encoder_{m}')(inputs[m]))
      if m in scales:
        features = models.scale_gradient(features, scales[m])
      logits[m] = nn.Dense(self.num_classes, name=f'head_{m}')(features)
    return {'fused': logits['a'] + logits['b'], **logits}

  def parameter_groups(self, params):
    """``encoder_<m>`` is modality ``m``'s branch, ``head_<m>`` its head."""
    def label(name):
      kind, modality = name.split('_')
      return f"{'branch' if kind == 'encoder' else 'head'}/{modality}"

    return {name: jax.tree.map(lambda _, n=name: label(n), tree) for name, tree in params.items()}


def test_whole_model_trains_with_gblend_through_parameter_groups(tmp_path):
  config = _small(tiny_synthetic_config('gblend', estimator='gradient'))
  config.num_epochs = 1
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir, model=SumOfHeads())
  stored = _stored_config(workdir)['model']
  assert stored == {'name': '<object>', 'class': f'{__name__}.SumOfHeads', 'features': 6,
                    'num_classes': 4}
  records = metrics.read_metrics(workdir)
  assert any('gblend/weight/a' in r for r in records)


def test_whole_model_with_wrong_outputs_is_refused_in_one_line(tmp_path):
  config = tiny_synthetic_config()
  with pytest.raises(UserError, match=r"model SumOfHeads returns \{.*'fused': \(2, 3\)\}; it must "
                     r'return \{head: \[batch, 4\]\}'):
    train.train_and_evaluate(config, str(tmp_path / 'run'), model=SumOfHeads(num_classes=3))
  assert not os.path.exists(tmp_path / 'run')


# ----- switching an encoder's type from the command line, in every config file -------------

@pytest.mark.parametrize('config_arg, modality, option, value', [
    ('configs/cgmnist.py:encoder_gray=resnet18', 'gray', 'width', '4'),
    ('configs/cgmnist.py:encoder=mlp', 'color', 'dropout', '0.25'),
    ('configs/synthetic.py:encoder_b=cnn', 'b', 'features', '24'),
    ('configs/synthetic.py:encoder=test_tiny_staged', 'a', 'widths', '(4, 3)'),
    ('configs/ucimf.py:views=fou+pix,encoder_pix=test_tiny_staged', 'pix', 'widths', '(4, 3)'),
])
def test_config_argument_switches_an_encoder_with_its_defaults(config_arg, modality, option, value):
  config = main.parse_flags(
      ['--config', config_arg, f'--config.model.encoders.{modality}.{option}={value}',
       '--workdir', '/unused']).config
  section = config.model.encoders[modality].to_dict()
  name = section.pop('name')
  expected = models.encoder_config(name)
  assert set(section) == set(expected) - {'name'}  # every option of the new type, overridable
  got = section[option]
  if option == 'widths':
    assert tuple(got) == (4, 3)
  else:
    assert str(got) == value
  model = models.build_model(config.model, tuple(config.model.encoders), 10)
  assert type(model.encoders[modality]) is models.ENCODERS[name]


def test_switching_the_name_alone_on_the_command_line_says_how_to_switch(tmp_path, capsys):
  code = main.main(['--config', 'configs/synthetic.py:smoke', '--config.model.encoders.a.name=cnn',
                    '--workdir', str(tmp_path / 'run')])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err.count('\n') == 0
  assert ("model.encoders.a: 'dropout', 'hidden' are not options of encoder 'cnn'; its options "
          "are ['features']. To switch an encoder's type with the new type's defaults, give the "
          'config file the argument encoder_a=cnn (or encoder=cnn for every modality)') in err
  assert not os.path.exists(tmp_path / 'run')


def test_config_file_that_registers_an_encoder_trains_and_resumes(tmp_path, capsys):
  config_file = tmp_path / 'my_config.py'
  config_file.write_text(textwrap.dedent(f'''
      import flax.linen as nn
      import sys
      sys.path.insert(0, {os.path.join(os.path.dirname(os.path.dirname(__file__)))!r})
      from configs import synthetic
      from mmjax import models

      @models.register_encoder('test_file_encoder')
      class FileEncoder(nn.Module):
        features: int = 4

        @nn.compact
        def __call__(self, x, *, train):
          return nn.tanh(nn.Dense(self.features)(x))

      def get_config(arg=None):
        config = synthetic.get_config(arg)
        config.model.encoders = {{m: models.encoder_config('test_file_encoder') for m in 'ab'}}
        config.data.num_train = 128
        config.data.num_val = config.data.num_test = 64
        config.batch_size = config.eval_batch_size = 32
        config.progress_bar = False
        return config
      '''))
  workdir = str(tmp_path / 'run')
  command = ['--config', f'{config_file}:smoke', '--config.model.encoders.b.features=3',
             '--workdir', workdir]
  assert main.main([*command, '--config.num_epochs=1']) == 0
  assert _stored_config(workdir)['model']['encoders']['b'] == {'name': 'test_file_encoder',
                                                              'features': 3}
  assert main.main([*command, '--config.num_epochs=2']) == 0  # resumes: the file registers again
  assert max(r['epoch'] for r in metrics.read_metrics(workdir)) == 2
  capsys.readouterr()


def test_docs_your_model_example_runs(tmp_path, monkeypatch, capsys):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, 'docs', 'your_model.md'), encoding='utf-8') as f:
    text = f.read()
  blocks = [b.split('```', 1)[0] for b in text.split('```python\n')[1:]]
  assert len(blocks) == 1
  script = tmp_path / 'your_model_example.py'
  script.write_text(blocks[0])
  monkeypatch.chdir(root)
  namespace = runpy.run_path(str(script), run_name='your_model_example')
  out = capsys.readouterr().out
  assert out.count('gblend {') == 1 and out.count('greedy {') == 1
  # The G-Blend run got its encoders as objects of a registered class: recorded by name.
  gblend_dir = namespace['gblend_summary']['workdir']
  assert _stored_config(gblend_dir)['model']['encoders'] == {
      'a': {'name': 'doc_staged_mlp', 'widths': [32, 16], 'features': 8},
      'b': {'name': 'doc_staged_mlp', 'widths': [16], 'features': 16}}
  assert any('gblend/weight/a' in r for r in metrics.read_metrics(gblend_dir))
  # Greedy learning named the encoder in the config: MMTM over it, re-balancing from epoch 2.
  greedy_dir = namespace['greedy_summary']['workdir']
  stored = _stored_config(greedy_dir)['model']
  assert stored['name'] == 'mmtm'
  assert stored['encoders']['b'] == {'name': 'doc_staged_mlp', 'widths': [24, 8], 'features': 16}
  _check_trained(greedy_dir, 'greedy')
