"""notebooks/own_loop.py: both methods in a hand-written train step, with no mmjax trainer.

The notebook itself runs in tests/test_notebooks.py, which checks its results here.
"""

import json
import os
import re

from conftest import ROOT

SOURCE = os.path.join(ROOT, 'notebooks', 'own_loop.py')


def test_own_loop_imports_no_trainer():
  with open(SOURCE, encoding='utf-8') as f:
    code = f.read()
  assert 'mmjax.train' not in code and 'Trainer' not in code
  imported = set(re.findall(r'^(?:from|import) (mmjax[\w.]*)', code, re.MULTILINE))
  assert imported == {'mmjax.methods', 'mmjax.models.mmtm'}, imported


def check_own_loop_results(runs):
  """What the own-loop notebook's smoke run (tests/test_notebooks.py executes it) must produce."""
  with open(os.path.join(runs, 'own_loop', 'smoke', 'results.json'), encoding='utf-8') as f:
    results = json.load(f)
  for weights in (results['offline']['weights'], results['in_step']['final_weights']):
    assert set(weights) == {'fused', 'audio', 'video'} and abs(sum(weights.values()) - 1) < 1e-4
  assert results['off']['rebalance_steps'] == {'audio': 0, 'video': 0}
  assert sum(results['guided']['rebalance_steps'].values()) > 0
