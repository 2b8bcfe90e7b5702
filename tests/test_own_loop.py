"""notebooks/own_loop.py: both methods in a hand-written train step, with no mmjax trainer."""

import json
import os
import re
import subprocess
import sys

from conftest import ROOT

SOURCE = os.path.join(ROOT, 'notebooks', 'own_loop.py')


def test_own_loop_imports_no_trainer():
  with open(SOURCE, encoding='utf-8') as f:
    code = f.read()
  assert 'mmjax.train' not in code and 'Trainer' not in code
  imported = set(re.findall(r'^(?:from|import) (mmjax[\w.]*)', code, re.MULTILINE))
  assert imported == {'mmjax.methods', 'mmjax.models.mmtm'}, imported


def test_own_loop_runs_as_a_script_at_smoke_size(tmp_path):
  env = dict(os.environ, MMJAX_NOTEBOOK_SMOKE='1', MMJAX_NOTEBOOK_RUNS=str(tmp_path),
             MPLBACKEND='Agg', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  # From notebooks/, the install cell finds the checkout and, mmjax being importable, installs nothing.
  result = subprocess.run([sys.executable, SOURCE], cwd=os.path.dirname(SOURCE), env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert 'steps, traced once' in out
  assert re.search(r"guided re-balancing steps: \{'audio': \d+, 'video': \d+\}", out)
  assert re.search(r'guided A\(f\) = 0\.\d+', out), out
  with open(tmp_path / 'own_loop' / 'smoke' / 'results.json', encoding='utf-8') as f:
    results = json.load(f)
  for weights in (results['offline']['weights'], results['in_step']['final_weights']):
    assert set(weights) == {'fused', 'audio', 'video'} and abs(sum(weights.values()) - 1) < 1e-4
  assert results['off']['rebalance_steps'] == {'audio': 0, 'video': 0}
  assert sum(results['guided']['rebalance_steps'].values()) > 0
