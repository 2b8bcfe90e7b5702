"""One classifier head shared by every modality, with uncertainty-weighted fusion of its outputs.

The architecture of MLA (Zhang et al., "Multimodal Representation Learning by Alternating
Unimodal Adaptation", CVPR 2024; :mod:`mmjax.methods.mla`): each modality ``m`` has an encoder
``phi_m``; ONE linear head ``(W, b)`` classifies every encoder's features, ``z_m = W phi_m + b``
(so every encoder must output the same number of features). The fused prediction combines the
per-modality logits at test time (``fusion``):

- ``'entropy'`` (default; the paper's test-time uncertainty-based fusion): per example, the
  entropy of each modality's prediction ``H_m = -sum_c p_mc log p_mc`` with
  ``p_m = softmax(z_m)``, weights ``lambda_m = exp(max_j H_j - H_m) / sum_k exp(max_j H_j - H_k)``
  (a softmax of ``-H``: the more certain modality weighs more), and ``z = sum_m lambda_m z_m``
  (:func:`entropy_fusion_weights`);
- ``'mean'``: ``z = (1/M) sum_m z_m``, the official code's fixed fusion (``av_alpha = 0.5``)
  when run without its ``--dynamic`` flag.

Parameters: ``encoders_<m>`` (``'branch/<m>'``) and ``shared_head`` (the head every output reads).
The shared head is labelled ``'fusion'`` (:mod:`mmjax.models.groups`: a layer shared by every
branch), so methods that plan per-head gradients (:mod:`mmjax.methods.per_head`) treat every
head as reading every parameter, which is what a shared head does.
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import groups
from mmjax.models.late_fusion import (FUSED, PerModalityHeads, check_dtype, compute_dtype,
                                      float32_logits, scale_gradient)

Array = jax.Array
PyTree = Any

FUSIONS = ('entropy', 'mean')


def prediction_entropy(logits: Array) -> Array:
  """``H = -sum_c p_c log p_c`` of ``p = softmax(logits)`` over the last axis, per example."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -(jnp.exp(log_p) * log_p).sum(-1)


def entropy_fusion_weights(logits: Mapping[str, Array]) -> dict[str, Array]:
  """Per example, ``lambda_m = exp(max_j H_j - H_m) / sum_k exp(max_j H_j - H_k)``."""
  names = tuple(logits)
  entropies = jnp.stack([prediction_entropy(logits[m]) for m in names], axis=-1)
  weights = jax.nn.softmax(-entropies, axis=-1)  # the max shift cancels in the ratio
  return {m: weights[..., i] for i, m in enumerate(names)}


def fuse(logits: Mapping[str, Array], fusion: str) -> Array:
  """The fused logits of the per-modality logits ``z_m`` (module docstring)."""
  if fusion not in FUSIONS:
    raise ValueError(f'model.fusion = {fusion!r}; valid fusions of the shared_head model are '
                     f'{list(FUSIONS)}.')
  if fusion == 'mean':
    return sum(logits.values()) / len(logits)
  weights = entropy_fusion_weights(logits)
  return sum(weights[m][:, None] * z for m, z in logits.items())


class SharedHeadClassifier(PerModalityHeads, nn.Module):
  """Encoders per modality and one linear head shared by all of them.

  Attributes:
    encoders: modality name -> encoder returning ``[batch, features]``, the same ``features``
      for every modality.
    num_classes: number of classes ``C``.
    fusion: the fused head's combination of the per-modality logits, one of :data:`FUSIONS`.
    dtype: the compute dtype of the head, one of :data:`~mmjax.models.late_fusion.DTYPES`.
  """
  encoders: Mapping[str, nn.Module]
  num_classes: int
  fusion: str = 'entropy'
  dtype: str = 'float32'

  def __post_init__(self):
    if not self.encoders:
      raise ValueError('SharedHeadClassifier needs at least one encoder; got none.')
    self.check_modality_names()
    if self.fusion not in FUSIONS:
      raise ValueError(f'model.fusion = {self.fusion!r}; valid fusions of the shared_head model '
                       f'are {list(FUSIONS)}.')
    check_dtype(self.dtype)
    super().__post_init__()

  def setup(self):
    self.shared_head = nn.Dense(self.num_classes, dtype=compute_dtype(self.dtype))

  def __call__(self, inputs: Mapping[str, Array], *, train: bool,
               head_grad_scale: Mapping[str, Array] | None = None,
               sow_features: bool = False) -> dict[str, Array]:
    """Logits ``{'fused': [B, C], <modality>: [B, C], ...}``.

    ``head_grad_scale[h]`` scales the gradient head ``h`` sends into the encoders (``'fused'``:
    into every encoder), as in :class:`~mmjax.models.late_fusion.LateFusionClassifier`.
    ``sow_features`` sows each modality's features into ``intermediates`` under
    ``'features'`` (MLA's gradient modification reads their batch mean).
    """
    missing = [m for m in self.modalities if m not in inputs]
    unexpected = [m for m in inputs if m not in self.encoders]
    if missing or unexpected:
      raise ValueError(f'inputs: missing {missing}, unexpected {unexpected}; the model\'s '
                       f'modalities are {list(self.modalities)}.')
    scales = dict(head_grad_scale or {})
    for h in scales:
      if h not in self.heads:
        raise ValueError(f'head_grad_scale: no head named {h!r}; valid heads are {list(self.heads)}.')
    features = {m: self.encoders[m](inputs[m], train=train) for m in self.modalities}
    widths = {m: f.shape[-1] if jnp.ndim(f) == 2 else tuple(f.shape) for m, f in features.items()}
    if len(set(widths.values())) > 1 or any(jnp.ndim(f) != 2 for f in features.values()):
      raise ValueError(
          f"the shared_head model needs [batch, features] with the same features from every "
          f"encoder (one head reads them all); got {widths}. Make the encoders' 'features' equal.")
    if sow_features:
      self.sow('intermediates', 'features', features)

    def for_head(h: str, x: Array) -> Array:
      return scale_gradient(x, scales[h]) if h in scales else x

    outputs = {m: self.shared_head(for_head(m, features[m])) for m in self.modalities}
    fused_inputs = {m: self.shared_head(for_head(FUSED, f)) for m, f in features.items()}
    return float32_logits({FUSED: fuse(float32_logits(fused_inputs), self.fusion), **outputs})

  def parameter_groups(self, params: PyTree) -> PyTree:
    """``encoders_<m>`` is ``'branch/<m>'``; ``shared_head`` is ``'fusion'`` (module docstring)."""
    owners = {f'encoders_{m}': groups.label(groups.BRANCH, m) for m in self.modalities}
    owners['shared_head'] = groups.FUSION
    return groups.top_level_labels(params, lambda top, _: owners[top])


__all__ = ['FUSIONS', 'SharedHeadClassifier', 'entropy_fusion_weights', 'fuse',
           'prediction_entropy']
