"""Every bundled config's `smoke` run learns: its fused head leaves chance (issue 13 item 14)."""

import importlib

import pytest

from mmjax import train


@pytest.mark.parametrize('name, num_classes', [('cgmnist', 10), ('ucimf', 10), ('synthetic', 4)])
def test_smoke_run_leaves_chance_on_the_fused_head(tmp_path, name, num_classes):
  config = importlib.import_module(f'configs.{name}').get_config('method=vanilla,smoke')
  config.progress_bar = False
  summary = train.train_and_evaluate(config, str(tmp_path))
  # Val is coloured like train for cgmnist, so val accuracy shows what was learned at all.
  assert summary['best_val']['fused'] > 3.0 / num_classes, summary['best_val']
