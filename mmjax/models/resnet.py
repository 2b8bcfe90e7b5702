"""The literature's ImageNet-stem ResNet-18 encoders: on a spectrogram, on an image, on frames.

OGM-GE (Peng et al., CVPR 2022; ``models/backbone.py`` and ``basic_model.py`` of its official
code) and the methods that follow its protocol (AGM, PMR, MMPareto, MLA, ReconBoost, InfoReg,
BalanceBenchmark) encode each modality of CREMA-D, Kinetics-Sounds, AVE and VGGSound with its own
ResNet-18 (He et al., CVPR 2016), trained from scratch, and so do Wu et al. (ICML 2022) each view
of ModelNet40:

- torchvision's layout: the ImageNet stem (7x7 stride-2 conv, BatchNorm, ReLU, 3x3 stride-2
  max-pool, all padded as PyTorch's ``padding=3`` and ``padding=1``), then BasicBlocks
  ``[2, 2, 2, 2]`` with channels ``width * (1, 2, 4, 8)`` (``width = 64``), BatchNorm after every
  convolution, a 1x1 projection on the shortcut of a block that changes stride or channels;
- no ``avgpool`` Linear and no ``fc``: the encoder's output is the global average pool of
  ``layer4``, a 512-d vector that the fusion head reads (OGM's concat fusion is one
  ``Linear(1024, C)`` on ``[audio; visual]``). ``features`` adds a ``Dense`` after the pool for
  those who want one; it is ours, not the literature's, and off by default;
- initialisation (OGM's ``weight_init``): convolutions Kaiming-normal, fan-out, ReLU gain
  (``std = sqrt(2 / (k * k * C_out))``); BatchNorm ``gamma = 1``, ``beta = 0``; the optional
  ``Dense`` Xavier-normal with zero bias, as OGM initialises every ``Linear``.

Three built-in encoders (:data:`mmjax.models.ENCODERS`):

``resnet18_spectrogram`` (:class:`ResNet18Spectrogram`)
  input ``[B, F, T]`` or ``[B, F, T, 1]``, a one-channel image with frequency as height and
  time as width, as OGM feeds ``(B, 1, 257, 188)``; a 257x188 CREMA-D spectrogram becomes a
  9x6 map of 512 channels before the pool, a 1024x128 Kaldi filter bank (Kinetics-Sounds) a
  32x4 map.
``resnet18_image`` (:class:`ResNet18Image`)
  input ``[B, H, W, C]``, one image: torchvision's ``resnet18`` without ``fc``, the branch of
  Wu et al. (2022) on the ModelNet40 views (``torchvision.models.resnet18(pretrained=False)``
  in their ``MMTM_MVCNN``), 7x7x512 for a 224x224 image.
``resnet18_frames`` (:class:`ResNet18Frames`)
  input ``[B, T, H, W, 3]``, ``T`` frames of a clip; the frames are folded into the batch
  (``[B * T, H, W, 3]``, so BatchNorm's statistics are over every frame of the batch, as in
  OGM), every frame goes through the same ResNet-18, and the embedding is the mean over frames
  and space of the ``[B, T, 7, 7, 512]`` map of 224x224 frames: OGM's
  ``AdaptiveAvgPool3d(1)`` over ``(B, 512, T, 7, 7)``, i.e. the mean of the per-frame
  embeddings, with no temporal modelling.

All are :class:`~mmjax.models.StagedEncoder` s with five stages (stem, ``layer1`` ..
``layer4``), usable by the late-fusion model and by the MMTM model of Wu et al. (2022), whose
default MMTMs sit after ``layer2..4`` (stages 2, 3, 4). The stages of ``resnet18_frames`` keep
the frame axis (``[B, T, h, w, c]`` between stages), so an MMTM's squeeze, the mean over every
axis between batch and channels, pools over frames and space alike and its channel-wise
excitation scales every frame of a clip the same.

``dtype`` (set by the model from ``model.dtype``): the layers compute in it (``bfloat16`` on
accelerators) with float32 parameters and float32 BatchNorm statistics, as every mmjax encoder.
``width`` scales every stage's channels (``width = 4`` for smoke tests; the papers use 64).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax

from mmjax.models.encoders import (ResNetLayer, StagedEncoder, batch_norm, conv_init,
                                   global_average_pool)
from mmjax.models.registry import register_encoder

Array = jax.Array

#: OGM's ``nn.init.xavier_normal_`` with zero bias, for the optional ``Dense`` after the pool.
_dense_init = nn.initializers.xavier_normal()


class ImageNetStem(nn.Module):
  """torchvision's ResNet stem: conv 7x7 stride 2 padding 3 (no bias), BatchNorm, ReLU, max-pool
  3x3 stride 2 padding 1 (a 224x224 image becomes 56x56)."""
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = nn.Conv(self.features, (7, 7), strides=2, padding=3, use_bias=False,
                kernel_init=conv_init, dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, self.dtype)(x))
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ImageStem(ImageNetStem):
  """:class:`ImageNetStem` on images ``[B, H, W, C]``, other ranks refused."""

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim != 4:
      raise ValueError(f'resnet18_image takes images [batch, height, width, channels]; got shape '
                       f'{x.shape}.')
    return super().__call__(x, train=train)


class SpectrogramStem(ImageNetStem):
  """:class:`ImageNetStem` on a one-channel spectrogram ``[B, F, T]`` or ``[B, F, T, 1]``."""

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim == 3:
      x = x[..., None]
    if x.ndim != 4 or x.shape[-1] != 1:
      raise ValueError(f'resnet18_spectrogram takes a spectrogram [batch, frequency, time] or '
                       f'[batch, frequency, time, 1]; got shape {x.shape}.')
    return super().__call__(x, train=train)


class PerFrame(nn.Module):
  """Runs ``stage`` on every frame of ``[B, T, H, W, C]``: folds the frames into the batch,
  applies ``stage`` and unfolds its output to ``[B, T, h, w, c]``."""
  stage: nn.Module

  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim != 5:
      raise ValueError(f'resnet18_frames takes frames [batch, frames, height, width, channels]; '
                       f'got shape {x.shape}.')
    batch, frames = x.shape[:2]
    y = self.stage(x.reshape((batch * frames,) + x.shape[2:]), train=train)
    return y.reshape((batch, frames) + y.shape[1:])


class _ImageNetResNet18(StagedEncoder):
  """ResNet-18 with the ImageNet stem, five stages, the pool of ``pool`` and an optional Dense.

  ====== ======== ============== ========= =========== ======================
  stage  name     stride         channels  224x224     257x188 spectrogram
  ====== ======== ============== ========= =========== ======================
  0      stem     2, max-pool 2  width     56x56       65x47
  1      layer1   1              width     56x56       65x47
  2      layer2   2              2 width   28x28       33x24
  3      layer3   2              4 width   14x14       17x12
  4      layer4   2              8 width   7x7         9x6
  ====== ======== ============== ========= =========== ======================
  """
  width: int = 64
  features: Optional[int] = None
  dtype: Any = None

  stem_class = ImageNetStem

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return (self.width, self.width, 2 * self.width, 4 * self.width, 8 * self.width)

  def image_stages(self) -> tuple[nn.Module, ...]:
    """The five stages on images ``[N, H, W, C]``, unbound (``parent=None``)."""
    return (
        self.stem_class(self.width, dtype=self.dtype, parent=None),
        ResNetLayer(self.width, strides=1, dtype=self.dtype, parent=None),
        ResNetLayer(2 * self.width, strides=2, dtype=self.dtype, parent=None),
        ResNetLayer(4 * self.width, strides=2, dtype=self.dtype, parent=None),
        ResNetLayer(8 * self.width, strides=2, dtype=self.dtype, parent=None),
    )

  def build_stages(self) -> tuple[nn.Module, ...]:
    """The stages this encoder runs: :meth:`image_stages` as they are."""
    return self.image_stages()

  def __post_init__(self):
    if isinstance(self.width, bool) or not (isinstance(self.width, int) and self.width > 0):
      raise ValueError(f'width = {self.width!r} must be a positive integer (64 in the papers).')
    if self.features is not None and (isinstance(self.features, bool) or not (
        isinstance(self.features, int) and self.features > 0)):
      raise ValueError(f'features = {self.features!r} must be None (no Dense after the pool, as '
                       'in the literature) or a positive integer.')
    super().__post_init__()

  def setup(self):
    self.stages = self.build_stages()
    if self.features is not None:
      self.head = nn.Dense(self.features, kernel_init=_dense_init,
                           bias_init=nn.initializers.zeros, dtype=self.dtype)

  def embed(self, x: Array, *, train: bool) -> Array:
    del train
    pooled = self.pool(x)
    return pooled if self.features is None else self.head(pooled)


@register_encoder('resnet18_spectrogram')
class ResNet18Spectrogram(_ImageNetResNet18):
  """ResNet-18 (ImageNet stem) on a one-channel spectrogram ``[B, F, T]`` or ``[B, F, T, 1]``.

  The audio encoder of OGM-GE and its followers: ``(B, 1, 257, 188)`` in PyTorch's layout is
  ``[B, 257, 188]`` here, 9x6x512 after ``layer4``, a ``[B, 512]`` embedding after the global
  average pool (``8 * width`` features, or ``features`` with the optional ``Dense``).
  """
  stem_class = SpectrogramStem

  def pool(self, x: Array) -> Array:
    return global_average_pool(x)


@register_encoder('resnet18_image')
class ResNet18Image(_ImageNetResNet18):
  """ResNet-18 (ImageNet stem) on images ``[B, H, W, C]``: torchvision's ``resnet18`` less ``fc``.

  The branch network of Wu et al. (2022) on ModelNet40 (``models.resnet18(pretrained=False)``
  per view, 224x224 renders, 7x7x512 after ``layer4``), and any one-image modality that wants
  the ImageNet stem. ``[B, 8 * width]`` after the global average pool, or ``[B, features]``
  with the optional ``Dense``. For 28x28 images, the CIFAR-stem ``resnet18`` keeps a usable map.
  """
  stem_class = ImageStem

  def pool(self, x: Array) -> Array:
    return global_average_pool(x)


@register_encoder('resnet18_frames')
class ResNet18Frames(_ImageNetResNet18):
  """ResNet-18 (ImageNet stem) on every frame of ``[B, T, H, W, 3]``, mean over frames.

  The visual encoder of OGM-GE and its followers: every stage runs on the frames folded into the
  batch and returns ``[B, T, h, w, c]``; the embedding is the mean over frames and space of
  ``layer4``'s map (OGM's ``AdaptiveAvgPool3d(1)``), ``[B, 8 * width]``, or ``[B, features]``
  with the optional ``Dense``.
  """

  def build_stages(self) -> tuple[nn.Module, ...]:
    """:meth:`image_stages`, each run on every frame (:class:`PerFrame`)."""
    return tuple(PerFrame(stage) for stage in self.image_stages())

  def pool(self, x: Array) -> Array:
    return x.mean(axis=(1, 2, 3))
