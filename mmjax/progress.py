"""The progress bar class: a notebook widget where ipywidgets can draw one, text elsewhere.

``tqdm.auto`` picks the widget bar in a Jupyter kernel, but where ipywidgets is not installed
it warns ``IProgress not found`` on import and falls back to the text bar. mmjax asks for the
widget bar only when ipywidgets is importable (``pip install -e '.[notebook]'``), so a kernel
without it gets the text bar with no warning.
"""

import importlib.util

if importlib.util.find_spec('ipywidgets') is not None:
  from tqdm.auto import tqdm
else:
  from tqdm.std import tqdm

__all__ = ['tqdm']
