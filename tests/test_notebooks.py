"""The notebooks: generated from notebooks/build_notebooks.py, and run top to bottom (smoke size)."""

import importlib.util
import os
import time

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS_DIR = os.path.join(ROOT, 'notebooks')


def _builder():
  spec = importlib.util.spec_from_file_location(
      'build_notebooks', os.path.join(NOTEBOOKS_DIR, 'build_notebooks.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


BUILDER = _builder()


@pytest.mark.parametrize('name', sorted(BUILDER.NOTEBOOKS))
def test_notebook_is_generated_and_valid(name):
  on_disk = nbformat.read(os.path.join(NOTEBOOKS_DIR, name), as_version=4)
  nbformat.validate(on_disk)
  built = BUILDER.notebook(BUILDER.NOTEBOOKS[name])
  assert [(c.cell_type, c.source) for c in on_disk.cells] == [
      (c.cell_type, c.source) for c in built.cells], (
          f'{name} differs from notebooks/build_notebooks.py: run python notebooks/build_notebooks.py')
  assert all(not c.get('outputs') for c in on_disk.cells if c.cell_type == 'code')
  assert 'pip' in on_disk.cells[1].source and 'constraints.txt' in on_disk.cells[1].source
  assert on_disk.cells[3].metadata.get('tags') == ['parameters']
  assert 'MMJAX_NOTEBOOK_SMOKE' in on_disk.cells[3].source


@pytest.mark.parametrize('name', sorted(BUILDER.NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
  # The kernel inherits this environment: smoke size, runs in a temporary folder, CPU.
  monkeypatch.setenv('MMJAX_NOTEBOOK_SMOKE', '1')
  monkeypatch.setenv('MMJAX_NOTEBOOK_RUNS', str(tmp_path / 'runs'))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('MPLBACKEND', 'module://matplotlib_inline.backend_inline')  # figures as PNG outputs
  # mmjax importable in the kernel, so the install cell installs nothing.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  nb = nbformat.read(os.path.join(NOTEBOOKS_DIR, name), as_version=4)
  client = NotebookClient(nb, kernel_name='python3', timeout=300,
                          resources={'metadata': {'path': NOTEBOOKS_DIR}})
  start = time.monotonic()
  client.execute()  # raises CellExecutionError, naming the cell, on the first error
  elapsed = time.monotonic() - start
  install_output = ''.join(o.get('text', '') for o in nb.cells[1].outputs)
  assert 'mmjax is already importable; nothing installed' in install_output
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert len(images) >= 2, f'{name} displayed {len(images)} figures'
  assert not any(o.get('output_type') == 'error' for c in nb.cells if c.cell_type == 'code'
                 for o in c.outputs)
  assert os.listdir(tmp_path / 'runs'), 'the notebook wrote no runs under MMJAX_NOTEBOOK_RUNS'
  streams = ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.outputs)
  assert 'IProgress not found' not in streams and 'TqdmWarning' not in streams
  print(f'{name}: {elapsed:.1f} s')
