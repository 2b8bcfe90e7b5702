"""Parameter groups: which parameters a modality's branch, a head or a fusion layer owns.

Every model has a method ``parameter_groups(params)`` that returns a pytree of the structure of
``params`` whose leaves are labels (strings):

- ``'branch/<m>'``: used only on modality ``m``'s path to its features (its encoder);
- ``'head/<h>'``: used only by head ``h`` on top of the features it reads (a prediction layer;
  the fused head's hidden layers are ``'head/fused'``);
- ``'fusion/<m>'``: a fusion layer that feeds modality ``m``'s branch from the others
  (MMTM's ``excite_<m>``, the ``theta'_m`` of Wu et al., Sec. 4.2);
- ``'fusion'``: a fusion layer shared by every branch (MMTM's ``squeeze``).

Methods use these labels, never parameter names: G-Blend's per-step estimator gives head
parameters their head's coefficient, and refuses a model with fusion parameters (its unimodal
heads then read other branches, so a unimodal estimation copy is not unimodal); greedy learning
sums ``theta_m`` (branch and head of ``m``) and ``theta'_m`` (``'fusion/<m>'`` and ``'fusion'``).

A whole model of a user's provides ``parameter_groups`` with these labels (and a
``'branch/<m>'`` group for every modality); :func:`mmjax.models.check_parameter_groups` checks
it when the run starts (``docs/your_model.md``).
"""

from __future__ import annotations

from typing import Any, Iterable

import jax

Array = jax.Array
PyTree = Any

BRANCH = 'branch'
HEAD = 'head'
FUSION = 'fusion'


def label(kind: str, owner: str | None = None) -> str:
  """``'<kind>/<owner>'``, or ``kind`` alone for a group shared by every branch."""
  return kind if owner is None else f'{kind}/{owner}'


def kind_of(group: str) -> str:
  """The kind of a label: ``'branch'``, ``'head'`` or ``'fusion'``."""
  return group.split('/', 1)[0]


def leaves_in(tree: PyTree, labels: PyTree, groups: Iterable[str]) -> list[Array]:
  """The leaves of ``tree`` whose label (in ``labels``, same structure) is one of ``groups``."""
  wanted = set(groups)
  return [leaf for group, leaf in zip(jax.tree.leaves(labels), jax.tree.leaves(tree))
          if group in wanted]


def top_level_labels(params: PyTree, group_of_top: Any) -> PyTree:
  """Labels for ``params`` from its top-level names: ``group_of_top(name, path)`` per leaf."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: group_of_top(str(getattr(path[0], 'key', path[0])), path), params)
