"""Baselines with fixed per-head weights: vanilla, uniform, fixed and unimodal training."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from mmjax.methods.base import Method, validate_weights


class Vanilla(Method):
  """Naive joint training: the loss is the fused head's cross-entropy alone.

  The per-modality heads are probes (weight 0): they learn on ``stop_gradient`` features, so
  a vanilla run still reports how well each modality's features alone classify.
  """

  name = 'vanilla'

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 if h == 'fused' else 0.0 for h in self.heads}


class Uniform(Method):
  """The fused loss plus every unimodal loss with equal weights.

  The auxiliary-loss baseline of Wang et al. (2020), Table 5.
  """

  name = 'uniform'

  def initial_weights(self) -> dict[str, float]:
    return {h: 1.0 for h in self.heads}


class Fixed(Method):
  """User-given weight per head (``method.weights``); weight 0 makes a head a probe."""

  name = 'fixed'
  DEFAULTS = {'weights': {}}

  def __init__(self, config: Mapping[str, Any], heads: Sequence[str], modalities: Sequence[str]):
    super().__init__(config, heads, modalities)
    weights = dict(config.get('weights') or {})
    if not weights:
      raise ValueError(
          f"method.weights is empty: the 'fixed' method needs a weight per head, e.g. "
          f"--config.method.weights='{{{', '.join(repr(h) + ': 1.0' for h in heads)}}}'.")
    self._weights = validate_weights(weights, self.heads, 'method.weights')

  @classmethod
  def adjust_config(cls, config: Any) -> None:
    """Weight 1 for every head (``fused`` and each encoder's modality) where ``method.weights``
    is empty, to override with ``--config.method.weights.<head>=w``."""
    if not config.method.get('weights'):
      config.method.weights = {h: 1.0 for h in ('fused', *config.model.encoders)}

  def initial_weights(self) -> dict[str, float]:
    return dict(self._weights)


class Unimodal(Method):
  """One modality alone: its encoder and head, the single-modality baseline of both papers.

  The model is built with ``method.modality`` only; its ``fused`` head (over that one
  modality) is a probe.
  """

  name = 'unimodal'
  DEFAULTS = {'modality': ''}

  @classmethod
  def model_modalities(cls, config: Mapping[str, Any], modalities: Sequence[str]) -> tuple[str, ...]:
    modality = config.get('modality', '')
    if modality not in modalities:
      raise ValueError(
          f'method.modality = {modality!r}: the unimodal method needs one of the data set\'s '
          f'modalities {list(modalities)}.')
    return (modality,)

  @property
  def selection_head(self) -> str:
    return self.modalities[0]

  def initial_weights(self) -> dict[str, float]:
    return {h: 0.0 if h == 'fused' else 1.0 for h in self.heads}
