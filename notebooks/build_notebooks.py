"""Writes the Colab-ready notebooks of this folder from their jupytext percent sources.

    python notebooks/build_notebooks.py           # writes NAME.ipynb from every NAME.py here
    python notebooks/build_notebooks.py --check   # exits 1, naming each NAME.ipynb out of date

Each notebook is written in its source ``notebooks/NAME.py`` (jupytext's percent format, see
``notebooks/README.md``); edit the source, not the ``.ipynb``, and rerun. A source cell
``# %% include="NAME"`` stands for the cells of ``notebooks/include/NAME.py``: the cells every
notebook shares (the Colab install) live once, since jupytext has no include of its own. The
notebooks are written without outputs, with the same metadata and numbered cell ids, so they
stay small and reviewable; ``tests/test_notebooks.py`` checks that they equal their sources.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import jupytext
import nbformat
from nbformat import v4

HERE = pathlib.Path(__file__).resolve().parent
INCLUDE_DIR = HERE / 'include'

#: The notebook metadata every generated notebook carries (a Colab-ready Python 3 kernel).
METADATA = {
    'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
    'language_info': {'name': 'python'},
    'colab': {'provenance': []},
}

#: The cell metadata a source may set: ``tags`` (``parameters`` marks papermill's cell).
KEPT_CELL_METADATA = ('tags',)


def sources(folder: pathlib.Path | None = None) -> list[pathlib.Path]:
  """The notebook sources in ``folder`` (default: this one): every ``*.py`` but this script."""
  folder = HERE if folder is None else folder
  return sorted(p for p in folder.glob('*.py') if p.name != pathlib.Path(__file__).name)


def _cells(path: pathlib.Path, include_dir: pathlib.Path, seen: tuple[str, ...] = ()
           ) -> list[nbformat.NotebookNode]:
  """The cells of the percent file ``path`` with every include cell replaced by its cells."""
  cells = []
  for cell in jupytext.read(path, fmt='py:percent').cells:
    name = cell.metadata.get('include')
    if name is None:
      cells.append(cell)
      continue
    target = include_dir / f'{name}.py'
    if not target.is_file():
      valid = sorted(p.stem for p in include_dir.glob('*.py'))
      raise ValueError(f'{path}: include={name!r} is not a file in {include_dir}; valid includes '
                       f'are {valid}.')
    if cell.source.strip():
      raise ValueError(f'{path}: the include={name!r} cell must be empty; its cells come from '
                       f'{target}.')
    if name in seen:
      raise ValueError(f'{path}: include={name!r} includes itself.')
    cells += _cells(target, include_dir, (*seen, name))
  return cells


def notebook(source: pathlib.Path | str, include_dir: pathlib.Path = INCLUDE_DIR
             ) -> nbformat.NotebookNode:
  """The notebook (nbformat v4, no outputs) that the percent source ``source`` describes."""
  nb = v4.new_notebook(metadata=METADATA)
  for cell in _cells(pathlib.Path(source), include_dir):
    metadata = {k: cell.metadata[k] for k in KEPT_CELL_METADATA if k in cell.metadata}
    if cell.cell_type == 'markdown':
      new = v4.new_markdown_cell(cell.source.strip(), metadata=metadata)
    else:
      new = v4.new_code_cell(cell.source.strip(), metadata=metadata)
    nb.cells.append(new)
  for i, cell in enumerate(nb.cells):
    cell.id = f'cell-{i:02d}'
  nbformat.validate(nb)
  return nb


def notebook_text(source: pathlib.Path | str, include_dir: pathlib.Path = INCLUDE_DIR) -> str:
  """The ``.ipynb`` file's text for ``source``, as :func:`main` writes it."""
  return nbformat.writes(notebook(source, include_dir)) + '\n'


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--check', action='store_true',
                      help='write nothing; exit 1 if a notebook differs from its source')
  args = parser.parse_args(argv)
  stale = []
  for source in sources(HERE):
    target = source.with_suffix('.ipynb')
    text = notebook_text(source, HERE / 'include')
    if target.is_file() and target.read_text(encoding='utf-8') == text:
      continue
    if args.check:
      stale.append(target)
    else:
      target.write_text(text, encoding='utf-8')
      print('wrote', target)
  for target in stale:
    print(f'{target} differs from {target.with_suffix(".py")}: run python {__file__}',
          file=sys.stderr)
  return 1 if stale else 0


if __name__ == '__main__':
  sys.exit(main())
