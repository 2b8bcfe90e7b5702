"""The notebooks: generated from their jupytext sources (notebooks/NAME.py), linted, and run top to
bottom (smoke size)."""

import importlib.util
import io
import os
import re
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT
from test_own_loop import check_own_loop_results

NOTEBOOKS_DIR = os.path.join(ROOT, 'notebooks')


def _builder():
  spec = importlib.util.spec_from_file_location(
      'build_notebooks', os.path.join(NOTEBOOKS_DIR, 'build_notebooks.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


BUILDER = _builder()
NAMES = [source.stem for source in BUILDER.sources()]


def _cell_index(nb, predicate):
  return next(i for i, c in enumerate(nb.cells) if predicate(c))


def _install_cell(nb):
  return _cell_index(nb, lambda c: c.cell_type == 'code' and 'pip' in c.source
                     and 'constraints.txt' in c.source)


def _script(name):
  """The notebook's code cells as one Python script (what a linter reads)."""
  return jupytext.writes(BUILDER.notebook(os.path.join(NOTEBOOKS_DIR, f'{name}.py')), 'py:percent')


def test_every_notebook_has_a_source():
  ipynbs = sorted(f[:-len('.ipynb')] for f in os.listdir(NOTEBOOKS_DIR) if f.endswith('.ipynb'))
  assert ipynbs == NAMES
  assert {'quickstart', 'gradient_blending', 'greedy_learning'} <= set(NAMES)


@pytest.mark.parametrize('name', NAMES)
def test_notebook_is_generated_and_valid(name):
  path = os.path.join(NOTEBOOKS_DIR, f'{name}.ipynb')
  with open(path, encoding='utf-8') as f:
    assert f.read() == BUILDER.notebook_text(os.path.join(NOTEBOOKS_DIR, f'{name}.py')), (
        f'{name}.ipynb differs from {name}.py: run python notebooks/build_notebooks.py')
  on_disk = nbformat.read(path, as_version=4)
  nbformat.validate(on_disk)
  assert all(not c.get('outputs') for c in on_disk.cells if c.cell_type == 'code')
  install = _install_cell(on_disk)
  parameters = _cell_index(on_disk, lambda c: c.metadata.get('tags') == ['parameters'])
  assert install < parameters
  assert 'MMJAX_NOTEBOOK_SMOKE' in on_disk.cells[parameters].source


@pytest.mark.parametrize('name', NAMES)
def test_notebook_code_compiles(name):
  compile(_script(name), f'{name}.py', 'exec')


@pytest.mark.parametrize('name', NAMES)
def test_notebook_code_passes_pyflakes(name):
  pyflakes_api = pytest.importorskip('pyflakes.api')
  reporter_module = pytest.importorskip('pyflakes.reporter')
  out, err = io.StringIO(), io.StringIO()
  problems = pyflakes_api.check(_script(name), f'{name}.py', reporter_module.Reporter(out, err))
  assert problems == 0, out.getvalue() + err.getvalue()


def _write(path, text):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding='utf-8')


def test_include_cells_are_replaced_by_the_include_file(tmp_path):
  _write(tmp_path / 'include' / 'setup.py',
         '# %% [markdown]\n# Shared note.\n\n# %%\nimport os\n')
  _write(tmp_path / 'nb.py', '# %% [markdown]\n# # Title\n\n# %% include="setup"\n\n'
         '# %% tags=["parameters"]\nSMOKE = os.environ.get("S") == "1"\n\n# %%\nprint(SMOKE)\n')
  nb = BUILDER.notebook(tmp_path / 'nb.py', tmp_path / 'include')
  assert [(c.cell_type, c.source, dict(c.metadata)) for c in nb.cells] == [
      ('markdown', '# Title', {}), ('markdown', 'Shared note.', {}), ('code', 'import os', {}),
      ('code', 'SMOKE = os.environ.get("S") == "1"', {'tags': ['parameters']}),
      ('code', 'print(SMOKE)', {})]
  assert [c.id for c in nb.cells] == [f'cell-{i:02d}' for i in range(5)]
  assert nb.metadata == BUILDER.METADATA


def test_an_unknown_include_is_named(tmp_path):
  _write(tmp_path / 'include' / 'setup.py', '# %%\nimport os\n')
  _write(tmp_path / 'nb.py', '# %% include="stup"\n')
  with pytest.raises(ValueError, match=r"include='stup' is not a file .*valid includes are \['setup'\]"):
    BUILDER.notebook(tmp_path / 'nb.py', tmp_path / 'include')


def test_check_names_a_stale_notebook(tmp_path, monkeypatch, capsys):
  _write(tmp_path / 'nb.py', '# %%\nprint(1)\n')
  monkeypatch.setattr(BUILDER, 'HERE', tmp_path)
  assert BUILDER.main(['--check']) == 1
  assert 'nb.ipynb differs from' in capsys.readouterr().err
  assert not (tmp_path / 'nb.ipynb').exists()
  assert BUILDER.main([]) == 0
  assert BUILDER.main(['--check']) == 0
  assert nbformat.read(tmp_path / 'nb.ipynb', as_version=4).cells[0].source == 'print(1)'


@pytest.mark.parametrize('name', NAMES)
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  # The kernel inherits this environment: smoke size, runs in a temporary folder, CPU.
  monkeypatch.setenv('MMJAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MMJAX_NOTEBOOK_RUNS', str(tmp_path / 'runs'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')  # figures as PNG outputs
  # mmjax importable in the kernel, so the install cell installs nothing.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  nb = nbformat.read(os.path.join(NOTEBOOKS_DIR, f'{name}.ipynb'), as_version=4)
  client = NotebookClient(nb, kernel_name='python3', timeout=300,
                          resources={'metadata': {'path': NOTEBOOKS_DIR}})
  start = time.monotonic()
  client.execute()  # raises CellExecutionError, naming the cell, on the first error
  elapsed = time.monotonic() - start
  install_output = ''.join(o.get('text', '') for o in nb.cells[_install_cell(nb)].outputs)
  assert 'mmjax is already importable; nothing installed' in install_output
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert len(images) >= 2, f'{name} displayed {len(images)} figures'
  assert not any(o.get('output_type') == 'error' for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs)
  assert os.listdir(tmp_path / 'runs'), 'the notebook wrote no runs under MMJAX_NOTEBOOK_RUNS'
  streams = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
  assert 'IProgress not found' not in streams and 'TqdmWarning' not in streams
  if name == 'own_loop':
    assert re.search(r"guided re-balancing steps: \{'audio': \d+, 'video': \d+\}", streams)
    assert 'steps, traced once' in streams
    check_own_loop_results(tmp_path / 'runs')
  print(f'{name}: {elapsed:.1f} s')
