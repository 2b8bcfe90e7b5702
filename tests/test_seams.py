"""The seams a user plugs into: the method interface and its run context, config arguments
owned by a method, evaluators listed in the config, summary.json and the report plots it names."""

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from matplotlib.figure import Figure

from conftest import assert_resume_is_bit_identical, tiny_synthetic_config
from configs import synthetic
from mmjax import config_lib, evaluators, methods, metrics, report, train
from mmjax.context import RunContext
from mmjax.errors import UserError
from mmjax.evaluators.utilization import ConditionalUtilizationRate

CONTEXT_FIELDS = ('config', 'seed', 'dataset', 'model', 'modalities', 'heads', 'input_shapes',
                  'mesh', 'replicated', 'steps_per_epoch', 'train_iterator', 'tx', 'shard',
                  'put_global', 'evaluate', 'eval_totals')


class ScaledFused(methods.Method):
  """A user's method: the fused head weighs ``fused_weight``, each modality's head 1."""

  name = 'scaled_fused'
  DEFAULTS = {'fused_weight': 2.0, 'note': 'x', 'per_head': {}}
  PLOTS = ('scaled_fused_weight',)

  def initial_weights(self):
    return {h: float(self.config['fused_weight']) if h == 'fused' else 1.0 for h in self.heads}

  def setup(self, ctx):
    assert isinstance(ctx, RunContext)
    self.steps_per_epoch = ctx.steps_per_epoch

  def on_epoch_start(self, ctx, state, epoch):
    assert isinstance(ctx, RunContext)
    return state, {'scaled_fused/epoch_started': float(epoch),
                   'scaled_fused/train_examples': float(len(ctx.dataset.splits['train'].label))}


def plot_scaled_fused_weight(runs, *, ax=None):
  """The fused head's weight over epochs."""
  run = runs if isinstance(runs, report.Run) else runs[0]
  fig = Figure()
  ax = ax or fig.add_subplot()
  epochs, values = run.series('scaled_fused/weight/fused', 'train')
  ax.plot(epochs, values)
  return ax.figure


class ValAccuracyGap(evaluators.Evaluator):
  """A user's evaluator: fused minus best unimodal accuracy, and the split it ran on."""

  name = 'accuracy_gap'
  DEFAULTS = {'scale': 1.0}

  def setup(self, ctx):
    self.modalities = ctx.modalities

  def evaluate(self, ctx, state, split, evaluated):
    assert isinstance(ctx, RunContext) and int(jax.device_get(state.step)) > 0
    best = max(evaluated[f'accuracy/{m}'] for m in self.modalities)
    return {'gap/fused_minus_best': self.options['scale'] * (evaluated['accuracy/fused'] - best),
            f'gap/is_{split}': 1.0}


@pytest.fixture
def registered():
  """Registers the user's method, evaluator and plot; removes them afterwards."""
  methods.register(ScaledFused)
  evaluators.register(ValAccuracyGap)
  report.register_plot('scaled_fused_weight')(plot_scaled_fused_weight)
  yield
  del methods.METHODS['scaled_fused'], evaluators.EVALUATORS['accuracy_gap']
  del report.PLOT_FUNCTIONS['scaled_fused_weight']


def test_registries_refuse_a_taken_name_or_a_non_class(registered):
  del registered

  class Other(methods.Method):
    name = 'scaled_fused'

  with pytest.raises(ValueError, match="method name 'scaled_fused' is taken by ScaledFused"):
    methods.register(Other)
  with pytest.raises(ValueError, match='is not a Method subclass with a name'):
    methods.register(ValAccuracyGap)
  with pytest.raises(ValueError, match="evaluator name 'utilization' is taken"):
    evaluators.register(type('Again', (evaluators.Evaluator,), {'name': 'utilization'}))
  with pytest.raises(ValueError, match="report plot 'loss' is taken by plot_loss"):
    report.register_plot('loss')(plot_scaled_fused_weight)
  methods.register(ScaledFused)  # registering the same class again changes nothing
  assert methods.get_method_class('scaled_fused') is ScaledFused


def test_run_context_holds_exactly_what_host_hooks_may_use():
  assert tuple(f.name for f in dataclasses.fields(RunContext)) == CONTEXT_FIELDS
  trainer = train.Trainer(tiny_synthetic_config('vanilla'))
  ctx = trainer.context
  with pytest.raises(dataclasses.FrozenInstanceError):
    ctx.seed = 1
  assert ctx.heads == ('fused', 'a', 'b') and ctx.modalities == ('a', 'b')
  assert ctx.steps_per_epoch == trainer.steps_per_epoch == 256 // 32
  state = trainer.init_state()
  assert ctx.evaluate(state, 'val') == trainer.evaluate(state, 'val')


def test_method_interface_is_two_visible_parts():
  step_pieces = {'initial_weights', 'init_state', 'model_kwargs', 'eval_model_kwargs', 'objective',
                 'gradients', 'optimizer_update', 'update_state'}
  host_hooks = {'adjust_config', 'model_modalities', 'reads_num_epochs', 'prepare_data',
                'selection_head', 'setup', 'extend_batch', 'on_epoch_start',
                'on_resume_within_epoch', 'state_metrics'}
  public = lambda cls: {k for k in vars(cls) if not k.startswith('_')}
  assert public(methods.StepPieces) - {'heads'} == step_pieces
  assert public(methods.HostHooks) - {'name', 'heads'} == host_hooks
  assert methods.Method.__mro__[1:3] == (methods.StepPieces, methods.HostHooks)


def test_a_user_method_trains_end_to_end_with_its_config_args_and_plot(registered, tmp_path):
  del registered
  config = tiny_synthetic_config('scaled_fused', fused_weight=3.0, note='hello')
  assert config.method.to_dict() == {'name': 'scaled_fused', 'fused_weight': 3.0, 'note': 'hello',
                                     'per_head': {}}
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  records = metrics.read_metrics(workdir)
  starts = [r for r in records if 'scaled_fused/epoch_started' in r]
  assert [r['scaled_fused/epoch_started'] for r in starts] == [0.0, 1.0]
  assert starts[0]['scaled_fused/train_examples'] == 256.0
  epoch_records = [r for r in metrics.select(records, 'train') if 'objective' in r]
  assert len(epoch_records) == 2
  for record in epoch_records:
    assert record['scaled_fused/weight/fused'] == 3.0
    # The epoch's mean objective is sum_h w_h mean CE_h: 3 * fused + a + b.
    expected = 3.0 * record['loss/fused'] + record['loss/a'] + record['loss/b']
    assert record['objective'] == pytest.approx(expected, rel=1e-5)
  with open(os.path.join(workdir, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  assert summary['method'] == 'scaled_fused'
  assert summary['plots'] == ['accuracy', 'loss', 'scaled_fused_weight']
  out = tmp_path / 'report'
  result = report.write_report([report.load_run(workdir)], str(out), dpi=20)
  assert result['skipped'] == []
  assert sorted(os.listdir(out / 'run')) == ['accuracy.png', 'loss.png', 'scaled_fused_weight.png']


def test_method_options_are_config_args(registered):
  del registered
  config = synthetic.get_config('method=gblend,estimator=gradient,every_steps=5,min_delta_o=0.01')
  assert config.method.every_steps == 5 and isinstance(config.method.every_steps, int)
  assert config.method.min_delta_o == 0.01 and config.method.estimator == 'gradient'
  with pytest.raises(ValueError, match=r"every_steps='five': expected a int"):
    synthetic.get_config('method=gblend,every_steps=five')
  with pytest.raises(ValueError, match=(
      r"config argument 'nope' is not known; valid arguments are \[.*'ema_decay'.*'every_steps'")):
    synthetic.get_config('method=gblend,nope=1')
  with pytest.raises(ValueError, match=(
      r"config argument every_steps='5' does not apply to method 'greedy'; its options are "
      r"\['alpha', 'mode', 'starting_epoch', 'window'\]")):
    synthetic.get_config('method=greedy,every_steps=5')
  # Only scalar options are arguments: a mapping is set with --config.method.KEY.
  with pytest.raises(ValueError, match="per_head='1' does not apply to method 'scaled_fused'"):
    synthetic.get_config('method=scaled_fused,per_head=1')
  assert 'per_head' not in methods.scalar_options('scaled_fused')


def test_num_epochs_may_grow_as_the_method_class_says():
  def plain(method):
    return config_lib.to_dict(tiny_synthetic_config(method) if ':' not in method else
                              tiny_synthetic_config('gblend', estimator=method.split(':')[1]))
  assert config_lib.num_epochs_can_grow(plain('vanilla'))
  assert config_lib.num_epochs_can_grow(plain('gblend:gradient'))
  assert not config_lib.num_epochs_can_grow(plain('gblend:online'))


def test_evaluators_listed_in_the_config_run_on_val_and_test(registered, tmp_path):
  del registered
  config = tiny_synthetic_config('vanilla')
  config.model = ml_collections.ConfigDict({  # any MMTM run may list the utilization rate
      'name': 'mmtm', 'encoders': config.model.encoders.to_dict(), 'mmtm_stages': (),
      'mmtm_ratio': 4})
  config.evals.accuracy_gap = {'scale': 2.0}
  config.evals.utilization = {}
  config.num_epochs = 1
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)
  records = metrics.read_metrics(workdir)
  for split in ('val', 'test'):
    [record] = metrics.select(records, split)
    best = max(record['accuracy/a'], record['accuracy/b'])
    assert record['gap/fused_minus_best'] == pytest.approx(2.0 * (record['accuracy/fused'] - best))
    assert record[f'gap/is_{split}'] == 1.0
    for m in ('a', 'b'):
      a_f, a_k = record['accuracy/fused'], record[f'greedy/acc_unimodal/{m}']
      assert record[f'greedy/u/{m}'] == pytest.approx((a_f - a_k) / a_f)
    assert record['greedy/d_util'] == pytest.approx(record['greedy/u/a'] - record['greedy/u/b'])
  assert 'gap/fused_minus_best' not in metrics.select(records, 'train')[0]
  with open(os.path.join(workdir, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  assert summary['evals'] == ['accuracy_gap', 'utilization']
  assert summary['plots'] == ['accuracy', 'loss', 'greedy_utilization']


def test_the_greedy_method_lists_the_utilization_evaluator():
  config = tiny_synthetic_config('greedy')
  assert config.evals.to_dict() == {'utilization': {}}
  [evaluator] = train.Trainer(config).evaluators
  assert isinstance(evaluator, ConditionalUtilizationRate)


@pytest.mark.parametrize('evals, match', [
    ({'nope': {}}, r"evals.nope is not an evaluator; valid evaluators are \[.*'utilization'"),
    ({'utilization': {'x': 1}},
     r"evals.utilization.x is not an option of evaluator 'utilization'; its options are \[\]"),
    ({'utilization': {}}, r"evals.utilization needs the MMTM network \(model.name = 'mmtm'\)"),
])
def test_a_bad_evaluator_is_one_line_and_writes_nothing(tmp_path, evals, match):
  config = tiny_synthetic_config('vanilla')
  for name, options in evals.items():
    config.evals[name] = options
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=match):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_a_resumed_run_writes_the_same_summary_json(tmp_path):
  config = tiny_synthetic_config('vanilla')
  full, resumed = assert_resume_is_bit_identical(config, tmp_path, stop_after_epoch=1)
  with open(os.path.join(full, 'summary.json'), encoding='utf-8') as f:
    expected = json.load(f)
  with open(os.path.join(resumed, 'summary.json'), encoding='utf-8') as f:
    assert json.load(f) == expected
  assert expected['finished'] and expected['epochs'] == 2
  np.testing.assert_equal(expected['best_val'], metrics.summarize(
      metrics.read_metrics(full), ('fused', 'a', 'b'), 'fused')['best_val'])


def test_rerunning_a_finished_run_restores_its_summary_json(tmp_path):
  # As after a kill between the last checkpoint and the summary's write: the rerun trains
  # nothing and still writes summary.json.
  config = tiny_synthetic_config('vanilla')
  config.num_epochs = 1
  workdir = str(tmp_path)
  returned = train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, 'summary.json')
  with open(path, encoding='utf-8') as f:
    expected = json.load(f)
  os.remove(path)
  assert train.train_and_evaluate(config, workdir) == returned
  with open(path, encoding='utf-8') as f:
    assert json.load(f) == expected
