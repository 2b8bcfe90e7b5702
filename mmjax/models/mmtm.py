"""Mid-fusion by Multi-modal Transfer Modules (MMTM), the network of Wu et al. (2022).

One branch per modality, built from that modality's encoder (its ``stages`` and ``embed``,
see :mod:`mmjax.models.encoders`), with an MMTM (Joze et al., CVPR 2020) after some stages and
one linear head per branch. As in the official code of Wu et al. (``MMTM_MVCNN``):

- an MMTM squeezes every branch's feature map by global average pooling (a 1-D MLP feature is
  its own squeeze), concatenates the squeezes ``z = [s_0, ..., s_{K-1}]``, applies the shared
  squeeze layer ``h = ReLU(W_z z)`` of width ``K * sum_k C_k / ratio`` (``2 (C_0 + C_1) / 4``
  for two branches and ``ratio = 4``) and, per branch, an excitation ``e_k = sigmoid(W_k h)``
  that scales branch ``k`` channel-wise, ``x_k <- x_k * e_k`` (no factor 2, unlike the MMTM
  paper);
- branch ``k``'s head gives logits ``y_k``; the ``fused`` prediction is their mean
  ``(1/K) sum_k y_k`` (Wu et al., Fig. 1), which has no parameters of its own.

Parameter tree: ``encoders_<m>`` and ``head_<m>`` are branch ``m``'s own parameters
``theta_m``; ``mmtm_<i>/squeeze`` (shared by all branches) and ``mmtm_<i>/excite_<m>`` are the
fusion parameters ``theta'_m`` that feed branch ``m`` (Wu et al., Sec. 4.2). See
:meth:`MMTMClassifier.parameter_groups`.

Each MMTM ``sow`` s, into the ``'intermediates'`` collection, ``squeeze_<m>`` (``[B, C_m]``, the
pooled input of branch ``m``) and ``scale_<m>`` (``[B, C_m]``, the excitation computed from
the inputs, before any re-balancing replaces it), both in float32 whatever the compute dtype.

``dtype = 'bfloat16'`` (:data:`~mmjax.models.late_fusion.DTYPES`) computes the MMTMs and heads
in bfloat16 with float32 parameters; the logits come out float32.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import groups
from mmjax.models.late_fusion import (FUSED, PerModalityHeads, check_dtype, compute_dtype,
                                      float32_logits, scale_gradient)

Array = jax.Array
PyTree = Any


def squeeze(x: Array) -> Array:
  """Global average pool over every axis between batch and channels (identity on ``[B, C]``)."""
  return x.mean(axis=tuple(range(1, x.ndim - 1))) if x.ndim > 2 else x


def default_mmtm_stages(num_stages: int) -> tuple[int, ...]:
  """The last three stages (all of them if fewer): ResNet-18 ``layer2..4``, as Wu et al."""
  return tuple(range(max(0, num_stages - 3), num_stages))


class MMTM(nn.Module):
  """One multi-modal transfer module over the branches ``channels`` (modality -> ``C_m``).

  Parameters: ``squeeze`` (shared ``Dense``) and ``excite_<m>`` (``Dense(C_m)`` per branch).
  """
  channels: Mapping[str, int]
  ratio: int = 4
  dtype: Any = None

  def setup(self):
    total = sum(self.channels.values())
    self.squeeze = nn.Dense(max(1, len(self.channels) * total // self.ratio), dtype=self.dtype)
    self.excite = {m: nn.Dense(c, dtype=self.dtype) for m, c in self.channels.items()}

  def __call__(self, features: Mapping[str, Array], *,
               rebalance: Mapping[str, Array] | None = None,
               average_scales: Mapping[str, Array] | None = None,
               unimodal: Mapping[str, Array] | None = None,
               mean_squeeze: Mapping[str, Array] | None = None) -> dict[str, Array]:
    """Scales every branch's features by its excitation.

    Args:
      features: modality -> feature map ``[B, ..., C_m]``.
      rebalance, average_scales: modality -> scalar flag, and modality -> ``[C_m]``. Where the
        flag is nonzero, branch ``m`` is scaled by the constant ``average_scales[m]`` instead of
        its excitation: the re-balancing step of Wu et al. (Alg. 1), which cuts the other
        modalities off from branch ``m`` (and gives ``excite_<m>`` no gradient).
      unimodal, mean_squeeze: modality -> scalar flag, and modality -> ``[C_m]``. Where the flag
        of branch ``k`` is nonzero, its excitation is computed with every other modality's
        squeeze replaced by ``mean_squeeze`` of that modality: the uni-modal network ``f'_k``
        of the conditional utilization rate (Wu et al., Sec. 4.1).
    """
    modalities = tuple(self.channels)
    squeezes = {m: squeeze(features[m]) for m in modalities}
    for m in modalities:
      self.sow('intermediates', f'squeeze_{m}', squeezes[m].astype(jnp.float32))
    if unimodal is None:
      hidden = nn.relu(self.squeeze(jnp.concatenate([squeezes[m] for m in modalities], -1)))
      hiddens = {m: hidden for m in modalities}
    else:
      hiddens = {}
      for k in modalities:
        parts = [squeezes[j] if j == k else jnp.where(
            unimodal[k],
            jnp.broadcast_to(mean_squeeze[j], squeezes[j].shape).astype(squeezes[j].dtype),
            squeezes[j])
                 for j in modalities]
        hiddens[k] = nn.relu(self.squeeze(jnp.concatenate(parts, -1)))
    out = {}
    for m in modalities:
      scale = nn.sigmoid(self.excite[m](hiddens[m]))
      self.sow('intermediates', f'scale_{m}', scale.astype(jnp.float32))
      if rebalance is not None:
        constant = jax.lax.stop_gradient(
            jnp.broadcast_to(average_scales[m], scale.shape).astype(scale.dtype))
        scale = jnp.where(rebalance[m], constant, scale)
      x = features[m]
      out[m] = x * scale.reshape(scale.shape[:1] + (1,) * (x.ndim - 2) + scale.shape[-1:])
    return out


class MMTMClassifier(PerModalityHeads, nn.Module):
  """Branches per modality with MMTMs after ``mmtm_stages``, a head per branch, mean fusion.

  Attributes:
    encoders: modality name -> encoder; branch ``m`` runs its stages, then its ``embed``.
    num_classes: number of classes ``C``.
    mmtm_stages: stage indices after which an MMTM fuses the branches (every encoder must have
      those stages); Wu et al. use ResNet-18 ``layer2..4``, our stages 2, 3, 4.
    mmtm_ratio: the squeeze layer's reduction ratio (4 in the official code).
    dtype: the dtype of the MMTMs' and heads' computation, one of
      :data:`~mmjax.models.late_fusion.DTYPES`; the builder passes it to the encoders too.
  """
  encoders: Mapping[str, nn.Module]
  num_classes: int
  mmtm_stages: Sequence[int] = (0,)
  mmtm_ratio: int = 4
  dtype: str = 'float32'

  def __post_init__(self):
    if len(self.encoders) < 2:
      raise ValueError(f'MMTMClassifier fuses two or more modalities; got {list(self.encoders)}.')
    self.check_modality_names()
    if not self.mmtm_stages:
      raise ValueError('model.mmtm_stages is empty: the MMTM model needs at least one MMTM.')
    if list(self.mmtm_stages) != sorted(set(self.mmtm_stages)):
      raise ValueError(f'model.mmtm_stages = {tuple(self.mmtm_stages)} must be increasing.')
    for m, encoder in self.encoders.items():
      if not all(hasattr(type(encoder), a) for a in ('stage_channels', 'embed')):
        raise ValueError(
            f'the encoder of modality {m!r} ({type(encoder).__name__}) is not a staged encoder: '
            'MMTM needs stage_channels, stages and embed (see mmjax.models.check_staged_encoder).')
      num_stages = len(encoder.stage_channels)
      bad = [i for i in self.mmtm_stages if not 0 <= i < num_stages]
      if bad:
        raise ValueError(
            f'model.mmtm_stages = {tuple(self.mmtm_stages)}: the encoder of modality {m!r} has '
            f'stages 0..{num_stages - 1}, so there is no stage {bad[0]}.')
    if not (isinstance(self.mmtm_ratio, int) and self.mmtm_ratio > 0):
      raise ValueError(f'model.mmtm_ratio = {self.mmtm_ratio!r} must be a positive integer.')
    check_dtype(self.dtype)
    super().__post_init__()

  @property
  def mmtm_channels(self) -> tuple[dict[str, int], ...]:
    """Per MMTM, modality -> channels of the feature map it scales."""
    return tuple({m: e.stage_channels[i] for m, e in self.encoders.items()}
                 for i in self.mmtm_stages)

  def setup(self):
    dtype = compute_dtype(self.dtype)
    self.head = {m: nn.Dense(self.num_classes, dtype=dtype) for m in self.modalities}
    self.mmtm = tuple(MMTM(channels, self.mmtm_ratio, dtype) for channels in self.mmtm_channels)

  def parameter_groups(self, params: PyTree) -> PyTree:
    """Labels of :mod:`mmjax.models.groups`: ``encoders_<m>`` is ``'branch/<m>'``, ``head_<m>``
    is ``'head/<m>'``, ``mmtm_<i>/excite_<m>`` is ``'fusion/<m>'`` and ``mmtm_<i>/squeeze`` is
    the shared ``'fusion'``. Branch ``m``'s ``theta_m`` is its branch and head, ``theta'_m`` its
    fusion groups (Wu et al., Sec. 4.2)."""
    owners = {f'encoders_{m}': groups.label(groups.BRANCH, m) for m in self.modalities}
    owners.update({f'head_{m}': groups.label(groups.HEAD, m) for m in self.modalities})
    fusion = {f'excite_{m}': groups.label(groups.FUSION, m) for m in self.modalities}
    fusion['squeeze'] = groups.FUSION

    def group_of(top: str, path: Any) -> str:
      if top.startswith('mmtm_'):
        return fusion[str(getattr(path[1], 'key', path[1]))]
      return owners[top]

    return groups.top_level_labels(params, group_of)

  def __call__(self, inputs: Mapping[str, Array], *, train: bool,
               head_grad_scale: Mapping[str, Array] | None = None,
               rebalance: Mapping[str, Array] | None = None,
               average_scales: Mapping[str, Sequence[Array]] | None = None,
               unimodal: Mapping[str, Array] | None = None,
               mean_squeeze: Mapping[str, Sequence[Array]] | None = None) -> dict[str, Array]:
    """Logits of every head: ``{'fused': [B, C], <modality>: [B, C], ...}``.

    Args:
      inputs: modality name -> batch.
      train: batch statistics and dropout when True.
      head_grad_scale: head -> scalar; the gradient head ``h`` sends back is multiplied by it
        (as :class:`~mmjax.models.LateFusionClassifier`). ``fused`` has no parameters, so with
        scale 0 it is a harmless probe: its loss sends no gradient anywhere.
      rebalance: modality -> scalar flag; branch ``m``'s scales in every MMTM are replaced by
        ``average_scales[m][i]`` (``[C_m]`` for the ``i``-th MMTM) where the flag is nonzero.
      unimodal: modality -> scalar flag; branch ``k``'s excitations see the other modalities'
        squeezes replaced by ``mean_squeeze[j][i]`` (``[C_j]`` for the ``i``-th MMTM): head
        ``k`` is then the uni-modal network ``f'_k``.
      All flags and vectors are arrays, so changing their values never retraces a jitted caller.
    """
    missing = [m for m in self.modalities if m not in inputs]
    if missing or set(inputs) - set(self.modalities):
      raise ValueError(f"inputs have modalities {sorted(inputs)}; the model's modalities are "
                       f'{list(self.modalities)}.')
    for h in head_grad_scale or {}:
      if h not in self.heads:
        raise ValueError(f'head_grad_scale: no head named {h!r}; valid heads are {list(self.heads)}.')
    if (rebalance is None) != (average_scales is None) or (unimodal is None) != (mean_squeeze is None):
      raise ValueError('rebalance needs average_scales and unimodal needs mean_squeeze.')
    scales = head_grad_scale or {}
    x = dict(inputs)
    position = {stage: j for j, stage in enumerate(self.mmtm_stages)}  # stage -> its MMTM
    for i in range(max(self.mmtm_stages) + 1):
      x = {m: self.encoders[m].stages[i](x[m], train=train) for m in self.modalities}
      if i in position:
        self._check_stage_channels(x, i)
        j = position[i]
        x = self.mmtm[j](
            x, rebalance=rebalance,
            average_scales=None if rebalance is None else {m: average_scales[m][j] for m in x},
            unimodal=unimodal,
            mean_squeeze=None if unimodal is None else {m: mean_squeeze[m][j] for m in x})
    logits = {}
    for m in self.modalities:
      encoder = self.encoders[m]
      h = x[m]
      for stage in encoder.stages[max(self.mmtm_stages) + 1:]:
        h = stage(h, train=train)
      features = encoder.embed(h, train=train)
      if features.ndim != 2:
        raise ValueError(
            f'the encoder of modality {m!r} ({type(encoder).__name__}): embed returned shape '
            f'{features.shape}; it must return [batch, features].')
      logits[m] = self.head[m](scale_gradient(features, scales[m]) if m in scales else features)
    logits = float32_logits(logits)
    to_fused = [scale_gradient(logits[m], scales[FUSED]) if FUSED in scales else logits[m]
                for m in self.modalities]
    return {FUSED: sum(to_fused) / len(to_fused), **logits}

  def _check_stage_channels(self, features: Mapping[str, Array], stage: int) -> None:
    for m, x in features.items():
      expected = self.encoders[m].stage_channels[stage]
      if x.ndim < 2 or x.shape[-1] != expected:
        raise ValueError(
            f'the encoder of modality {m!r} ({type(self.encoders[m]).__name__}): stage {stage} '
            f'returned shape {x.shape}, but its stage_channels[{stage}] = {expected}; the MMTM '
            'there scales the last axis, so stage_channels must give its size.')
