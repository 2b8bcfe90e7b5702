# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# **Runtime.** The notebook runs on a CPU in minutes. To use an accelerator in Colab choose
# *Runtime → Change runtime type → T4 GPU* (or *TPU*) before running the first cell: the install
# cell then keeps the runtime's own JAX build (with CUDA or TPU support) and installs mmjax's other
# dependencies around it; on a CPU runtime it installs the exact versions of `constraints.txt`.
# mmjax uses every device JAX sees (`jax.devices()`) with no change to the code.
#
# In a fresh Colab runtime, set the environment variable `MMJAX_GIT_URL` to the clone URL of the
# mmjax repository first (`%env MMJAX_GIT_URL=https://...`); from a clone of the repository
# (`jupyter lab notebooks/`) nothing is installed when mmjax is already importable. If pip reports
# that it replaced packages the runtime had already imported, restart the session
# (*Runtime → Restart session*) and run all cells again.

# %%
# Install mmjax in a fresh runtime; skipped when mmjax is already importable.
import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys


def find_checkout(start):
  """The mmjax repository holding ``start`` (or one of its parents), or None."""
  for folder in (start, *start.parents):
    if (folder / 'pyproject.toml').is_file() and (folder / 'mmjax' / '__init__.py').is_file():
      return folder
  return None


def has_accelerator():
  """Whether the runtime has a GPU or TPU (checked without importing JAX)."""
  return (os.path.exists('/dev/nvidia0') or os.path.exists('/dev/accel0')
          or 'COLAB_TPU_ADDR' in os.environ)


REPO = find_checkout(pathlib.Path.cwd()) or find_checkout(pathlib.Path.cwd() / 'mmjax')
if REPO is None:
  if not os.environ.get('MMJAX_GIT_URL'):
    raise RuntimeError('mmjax is not here: set MMJAX_GIT_URL to the clone URL of the mmjax '
                       'repository (%env MMJAX_GIT_URL=https://...) or run this notebook from a clone.')
  subprocess.run(['git', 'clone', '--depth', '1', os.environ['MMJAX_GIT_URL'], 'mmjax'], check=True)
  REPO = pathlib.Path('mmjax').resolve()
if importlib.util.find_spec('mmjax') is None:
  # The notebook extra adds ipywidgets, for progress bars drawn as widgets.
  pip = [sys.executable, '-m', 'pip', 'install', '--quiet', '-e', f'{REPO}[notebook]']
  if has_accelerator():
    # Keep the runtime's JAX build (CUDA or TPU); the rest follows pyproject.toml.
    pip += [f'{name}=={importlib.metadata.version(name)}' for name in ('jax', 'jaxlib')]
  else:
    pip += ['-c', str(REPO / 'constraints.txt')]
  subprocess.run(pip, check=True)
  print('installed mmjax from', REPO)
else:
  print('mmjax is already importable; nothing installed')
# The experiment configs (configs/*.py) live in the repository, next to the package.
sys.path.insert(0, str(REPO))

# %% [markdown]
# **Parameters.** `SMOKE` (the environment variable `MMJAX_NOTEBOOK_SMOKE=1`, as CI runs this
# notebook) makes every run tiny: each config's `smoke` variant and one or two epochs. The cell is
# tagged `parameters`, so papermill can set the values too. Runs are written under `RUNS`; running
# the notebook again resumes them (a finished run is not trained again).
