"""Late fusion with one classifier head per modality and one on the fused features.

This is the architecture of Wang et al. (2020), Fig. 2c: each modality ``m`` has an encoder
``phi_m``; the fused head classifies the concatenation (or sum) of all encoders' features,
and each modality has its own linear head on its encoder's features, giving the ``k``
uni-modal losses plus the multi-modal loss that Gradient Blending weighs (Eq. 6).

Mixed precision (:data:`DTYPES`): ``dtype = 'bfloat16'`` computes every layer in bfloat16
while the parameters stay float32; the logits are returned in float32, so every loss and
metric is computed in float32.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.models import groups

Array = jax.Array
PyTree = Any

FUSED = 'fused'
FUSIONS = ('concat', 'sum')
#: Valid ``model.dtype`` values: the dtype the layers compute in (parameters stay float32).
DTYPES = ('float32', 'bfloat16')


def check_dtype(dtype: Any) -> None:
  """Raises a one-line ``ValueError`` unless ``dtype`` is one of :data:`DTYPES`."""
  if dtype not in DTYPES:
    raise ValueError(f'model.dtype = {dtype!r} is not a compute dtype; valid dtypes are '
                     f'{list(DTYPES)}.')


def compute_dtype(dtype: str) -> Any:
  """The Flax ``dtype`` argument for ``model.dtype``: ``None`` (the float32 parameters'
  dtype, Flax's default) for ``'float32'``, ``jnp.bfloat16`` for ``'bfloat16'``."""
  check_dtype(dtype)
  return None if dtype == 'float32' else jnp.dtype(dtype)


def with_compute_dtype(encoders: Mapping[str, nn.Module], dtype: str) -> dict[str, nn.Module]:
  """``encoders`` computing in ``dtype``: each encoder whose class declares a ``dtype`` field
  left at ``None`` is cloned with the Flax dtype of ``dtype``; the others are kept as they are
  (an encoder without the field computes in whatever its layers do)."""
  flax_dtype = compute_dtype(dtype)
  if flax_dtype is None:
    return dict(encoders)
  return {m: e.clone(dtype=flax_dtype) if getattr(e, 'dtype', '') is None else e
          for m, e in encoders.items()}


def float32_logits(outputs: Mapping[str, Array]) -> dict[str, Array]:
  """Every head's logits in float32 (losses and metrics are computed in float32)."""
  return {h: o.astype(jnp.float32) for h, o in outputs.items()}


def scale_gradient(x: Array, scale: Array) -> Array:
  """Returns ``x`` unchanged; the gradient flowing back through it is multiplied by ``scale``.

  ``stop_gradient(x) + scale * (x - stop_gradient(x))``: the forward value is ``x`` exactly,
  the derivative with respect to ``x`` is ``scale``. ``scale`` may be traced.
  """
  detached = jax.lax.stop_gradient(x)
  return detached + jnp.asarray(scale, x.dtype) * (x - detached)


class PerModalityHeads:
  """``modalities`` and ``heads`` of a classifier with one encoder (``self.encoders``) per modality.

  Shared by the late-fusion and the MMTM classifiers: outputs are keyed by head, ``'fused'``
  then every modality in the order of ``encoders``.
  """

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.encoders)

  @property
  def heads(self) -> tuple[str, ...]:
    """The keys of the output: ``'fused'`` then every modality."""
    return (FUSED, *self.modalities)

  def check_modality_names(self) -> None:
    if FUSED in self.encoders:
      raise ValueError(f'{FUSED!r} names the fused head and cannot be a modality; rename that modality.')


class LateFusionClassifier(PerModalityHeads, nn.Module):
  """Encoders per modality, a linear head per modality and an MLP head on the fused features.

  Attributes:
    encoders: modality name -> encoder (see :mod:`mmjax.models.encoders`); its order is the
      order of ``modalities`` and of the concatenation.
    num_classes: number of classes ``C``.
    fusion: ``'concat'`` (features concatenated) or ``'sum'`` (features added; every encoder
      must then have the same ``features``).
    fused_hidden: widths of the fused head's hidden ``Dense`` + ReLU layers before its
      prediction layer (Wang et al. use two FC layers on the concatenated features).
    fused_dropout: dropout rate on the fused features (the dropout baseline of Wang et al.,
      Table 5); needs the rng ``'dropout'`` when ``train`` and the rate is positive.
    dtype: the dtype of the heads' computation, one of :data:`DTYPES`; the builder
      (:func:`mmjax.models.build_model`) passes it to the encoders too. Logits come out float32.

  Parameters: ``encoders_<m>`` (encoder of modality ``m``), ``head_<h>`` (the prediction
  ``Dense`` of head ``h``, for ``h`` in :attr:`heads`) and ``fused_mlp_<i>`` (the ``i``-th
  hidden layer of the fused head); :meth:`parameter_groups` labels them.
  """
  encoders: Mapping[str, nn.Module]
  num_classes: int
  fusion: str = 'concat'
  fused_hidden: Sequence[int] = ()
  fused_dropout: float = 0.0
  dtype: str = 'float32'

  def __post_init__(self):
    if not self.encoders:
      raise ValueError('LateFusionClassifier needs at least one encoder; got none.')
    self.check_modality_names()
    if self.fusion not in FUSIONS:
      raise ValueError(f'fusion = {self.fusion!r} is not a fusion; valid fusions are {list(FUSIONS)}.')
    if not 0.0 <= self.fused_dropout < 1.0:
      raise ValueError(f'fused_dropout = {self.fused_dropout!r} must be in [0, 1).')
    check_dtype(self.dtype)
    super().__post_init__()

  #: What :attr:`has_linear_fused_head` needs, in words, for a method's refusal message.
  LINEAR_FUSED_HEAD = "no model.fused_hidden; fusion 'sum' without fused_dropout"

  @property
  def has_linear_fused_head(self) -> bool:
    """Whether the fused logits are a sum of per-modality linear parts (``__call__``
    with ``decompose_fused`` is exact): no hidden layers, and no dropout under ``'sum'`` fusion."""
    return not self.fused_hidden and not (self.fusion == 'sum' and self.fused_dropout)

  def setup(self):
    dtype = compute_dtype(self.dtype)
    self.head = {h: nn.Dense(self.num_classes, dtype=dtype) for h in self.heads}
    self.fused_mlp = tuple(nn.Dense(width, dtype=dtype) for width in self.fused_hidden)
    self.dropout = nn.Dropout(self.fused_dropout)

  def __call__(self, inputs: Mapping[str, Array], *, train: bool,
               head_grad_scale: Mapping[str, Array] | None = None,
               decompose_fused: bool = False) -> dict[str, Array]:
    """Logits of every head: ``{'fused': [B, C], <modality>: [B, C], ...}``.

    Args:
      inputs: modality name -> batch; its keys must be the encoders' keys.
      train: batch statistics and dropout when True.
      head_grad_scale: head name -> scalar array ``s_h``. The gradient that head ``h`` sends
        back into the encoders is multiplied by ``s_h`` (for ``'fused'``, into every encoder);
        the forward values and the head's own gradients are unchanged. A missing head has
        scale 1. ``s_h = 0`` makes head ``h`` a probe that learns on detached features. The
        scales enter the computation as arrays, so a jitted caller that takes them as
        arguments is not retraced when their values change.
      decompose_fused: sow, into ``intermediates`` under ``'fused_parts'``, each modality's
        share of the fused logits, ``W_m f_m + b / M`` (:meth:`fused_parts`), for OGM-GE's
        scores (Peng et al., 2022, Eq. 8). Needs a linear fused head (no ``fused_hidden``).
    """
    self._check_inputs(inputs)
    scales = head_grad_scale or {}
    self._check_scales(scales)
    features = {m: self.encoders[m](inputs[m], train=train) for m in self.modalities}
    for m, f in features.items():
      if jnp.ndim(f) != 2:
        raise ValueError(
            f'the encoder of modality {m!r} ({type(self.encoders[m]).__name__}) returned shape '
            f'{jnp.shape(f)}; late fusion needs [batch, features] from every encoder.')

    def for_head(h: str, x: Array) -> Array:
      return scale_gradient(x, scales[h]) if h in scales else x

    outputs = {FUSED: self._fused_logits({m: for_head(FUSED, f) for m, f in features.items()}, train,
                                         decompose_fused)}
    for m in self.modalities:
      outputs[m] = self.head[m](for_head(m, features[m]))
    return float32_logits(outputs)

  def parameter_groups(self, params: PyTree) -> PyTree:
    """Labels of :mod:`mmjax.models.groups`: ``encoders_<m>`` is ``'branch/<m>'``,
    ``head_<h>`` is ``'head/<h>'``, ``fused_mlp_<i>`` is ``'head/fused'``; no fusion layers."""
    owners = {f'encoders_{m}': groups.label(groups.BRANCH, m) for m in self.modalities}
    owners.update({f'head_{h}': groups.label(groups.HEAD, h) for h in self.heads})
    owners.update({f'fused_mlp_{i}': groups.label(groups.HEAD, FUSED)
                   for i in range(len(self.fused_hidden))})
    return groups.top_level_labels(params, lambda top, _: owners[top])

  def _fused_logits(self, features: Mapping[str, Array], train: bool, decompose: bool) -> Array:
    if decompose and self.fused_hidden:
      raise ValueError(
          f'decompose_fused needs a linear fused head; this model has fused_hidden = '
          f'{tuple(self.fused_hidden)}.')
    if decompose and self.fusion == 'sum' and self.fused_dropout:
      raise ValueError(
          f"decompose_fused with fusion = 'sum' needs fused_dropout = 0; got {self.fused_dropout}.")
    if self.fusion == 'concat':
      fused = jnp.concatenate([features[m] for m in self.modalities], axis=-1)
    else:
      sizes = {m: f.shape[-1] for m, f in features.items()}
      if len(set(sizes.values())) > 1:
        raise ValueError(
            f"fusion = 'sum' needs every encoder to output the same number of features; got "
            f"{sizes}. Make the encoders' 'features' equal or use fusion = 'concat'.")
      fused = sum(features[m] for m in self.modalities)
    fused = self.dropout(fused, deterministic=not train)
    for layer in self.fused_mlp:
      fused = nn.relu(layer(fused))
    logits = self.head[FUSED](fused)
    if decompose:
      self.sow('intermediates', 'fused_parts', self.fused_parts(features, fused))
    return logits

  def fused_parts(self, features: Mapping[str, Array], fused_input: Array) -> dict[str, Array]:
    """Each modality's share of a linear fused head's logits: ``W_m f_m + b / M``.

    With ``fusion='concat'``, ``W_m`` are the rows of the head's kernel that read modality
    ``m``'s slice of the (dropped-out) concatenation ``fused_input``; with ``'sum'`` (no fused
    dropout), ``W_m = W``. The shares sum to the fused logits.
    """
    head = self.head[FUSED].variables['params']
    bias_share = head['bias'] / len(self.modalities)
    parts, start = {}, 0
    for m in self.modalities:
      width = features[m].shape[-1]
      if self.fusion == 'concat':
        parts[m] = fused_input[:, start:start + width] @ head['kernel'][start:start + width]
        start += width
      else:
        parts[m] = features[m] @ head['kernel']
      parts[m] = parts[m] + bias_share
    return parts

  def _check_inputs(self, inputs: Mapping[str, Array]) -> None:
    missing = [m for m in self.modalities if m not in inputs]
    unexpected = [m for m in inputs if m not in self.encoders]
    if missing or unexpected:
      problems = [f'missing modality {m!r}' for m in missing]
      problems += [f'unexpected modality {m!r}' for m in unexpected]
      raise ValueError(f"inputs: {'; '.join(problems)}. The model's modalities are {list(self.modalities)}.")

  def _check_scales(self, head_grad_scale: Mapping[str, Array]) -> None:
    for h, s in head_grad_scale.items():
      if h not in self.heads:
        raise ValueError(f'head_grad_scale: no head named {h!r}; valid heads are {list(self.heads)}.')
      if jnp.ndim(s) != 0:
        raise ValueError(f'head_grad_scale[{h!r}] must be a scalar; got shape {jnp.shape(s)}.')
