"""Per-modality encoders, each split into stages so that mid-fusion can run them one by one.

Every encoder is a ``flax.linen`` module with the same interface:

- ``setup()`` defines ``self.stages``, a tuple of submodules each called as
  ``stage(x, train=train)``, and ``self.head``, the final ``Dense`` projection;
- ``num_stages`` and ``stage_channels`` (the channels out of each stage, to size an MMTM
  between stages) are properties computed from the constructor arguments, so they work on
  an unbound module;
- ``embed(x, *, train)`` turns the output of the last stage into a ``[B, features]`` vector
  (global average pooling for the conv nets, then ``head``);
- ``__call__(x, *, train)`` runs every stage, then ``embed``.

Running the stages one by one and then ``embed`` gives exactly ``__call__``; a parent module
reaches them as ``self.encoders[m].stages`` (Wu et al. 2022 put MMTM after ResNet-18
``layer2``, ``layer3`` and ``layer4``, i.e. after ``stages[2]``, ``stages[3]``, ``stages[4]``
of :class:`ResNet18`). Convolutions pad by ``kernel // 2`` on each side, as PyTorch's
``padding=k//2`` in the reference implementations, so stride-2 layers see the same windows.

Parameter tree of an encoder: ``stages_<i>/...`` for stage ``i`` and ``head/{kernel,bias}``.

Mixed precision: every encoder has a ``dtype`` field, the dtype its layers compute in (Flax's
``dtype``; ``None``, the default, computes in the parameters' float32). The model sets it from
``model.dtype`` (``'bfloat16'`` on accelerators); parameters stay float32 (``param_dtype``) and
BatchNorm computes its statistics and keeps its running averages in float32 whatever ``dtype``.

These are built-in encoders of :data:`ENCODERS`; the ImageNet-stem ResNet-18s of the
audio-visual literature (``resnet18_spectrogram``, ``resnet18_frames``, ``resnet18_image``) are
in :mod:`mmjax.models.resnet`. Any ``flax.linen`` module can be an
encoder: late fusion needs only ``__call__(x, *, train) -> [B, features]``, MMTM the staged
interface above (``stage_channels``, ``stages``, ``embed``), which
:func:`mmjax.models.check_staged_encoder` checks; ``docs/your_model.md`` has the contract.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax

Array = jax.Array

# He (fan-out) initialisation of conv kernels, as torchvision's ResNet.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _flatten(x: Array) -> Array:
  return x.reshape(x.shape[0], -1)


def global_average_pool(x: Array) -> Array:
  """Mean over the spatial axes of an NHWC map: ``[B, H, W, C] -> [B, C]``."""
  return x.mean(axis=(1, 2))


class DenseBlock(nn.Module):
  """One MLP stage: flatten, ``Dense(features)``, ReLU, dropout (rng ``'dropout'`` in training)."""
  features: int
  dropout: float = 0.0
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = nn.relu(nn.Dense(self.features, dtype=self.dtype)(_flatten(x)))
    return nn.Dropout(self.dropout)(x, deterministic=not train)


class StagedEncoder(nn.Module):
  """The shared interface: ``stages``, then ``embed``.

  Subclasses define ``setup`` (``self.stages`` and ``self.head``), ``stage_channels`` and
  ``pool`` (how the last stage's output becomes a vector).
  """

  @property
  def stage_channels(self) -> tuple[int, ...]:
    raise NotImplementedError

  @property
  def num_stages(self) -> int:
    return len(self.stage_channels)

  def pool(self, x: Array) -> Array:
    raise NotImplementedError

  def embed(self, x: Array, *, train: bool) -> Array:
    del train
    return self.head(self.pool(x))

  def __call__(self, x: Array, *, train: bool) -> Array:
    for stage in self.stages:
      x = stage(x, train=train)
    return self.embed(x, train=train)


class MLPEncoder(StagedEncoder):
  """A multi-layer perceptron on ``[B, D]`` inputs (inputs with more axes are flattened).

  Stages: one :class:`DenseBlock` (Dense + ReLU + dropout) per entry of ``hidden``.
  ``embed``: ``Dense(features)``, no activation.
  """
  hidden: Sequence[int] = (256, 256)
  features: int = 128
  dropout: float = 0.0
  dtype: Any = None

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return tuple(self.hidden)

  def setup(self):
    self.stages = tuple(DenseBlock(h, self.dropout, self.dtype) for h in self.hidden)
    self.head = nn.Dense(self.features, dtype=self.dtype)

  def pool(self, x: Array) -> Array:
    return _flatten(x)



class ConvBlock(nn.Module):
  """Conv (padding ``kernel_size // 2``) + ReLU, optionally followed by a 3x3/2 max-pool."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  pool: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    del train
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
                padding=self.kernel_size // 2, dtype=self.dtype)(x)
    x = nn.relu(x)
    if self.pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return x


class SmallCNN(StagedEncoder):
  """The four-conv network of the Colored-MNIST literature (Kim et al. 2019; PMR's CGMNIST).

  Input NHWC (28x28 for MNIST). Four stages, one per conv block:

  ====== ===================================================== ========= ===========
  stage  layers                                                channels  28x28 input
  ====== ===================================================== ========= ===========
  0      conv 5x5, 32 + ReLU, max-pool 3x3 stride 2 padding 1  32        14x14
  1      conv 3x3, 32 + ReLU                                   32        14x14
  2      conv 3x3 stride 2, 64 + ReLU                          64        7x7
  3      conv 3x3, 64 + ReLU                                   64        7x7
  ====== ===================================================== ========= ===========

  ``embed``: global average pool, then ``Dense(features)``. The max-pool is the reference
  code's ``MaxPool2d(kernel_size=3, stride=2, padding=1)`` (it halves the map as a 2x2/2
  pool would).
  """
  features: int = 512
  dtype: Any = None

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return (32, 32, 64, 64)

  def setup(self):
    self.stages = (
        ConvBlock(32, kernel_size=5, pool=True, dtype=self.dtype),
        ConvBlock(32, dtype=self.dtype),
        ConvBlock(64, strides=2, dtype=self.dtype),
        ConvBlock(64, dtype=self.dtype),
    )
    self.head = nn.Dense(self.features, dtype=self.dtype)

  def pool(self, x: Array) -> Array:
    return global_average_pool(x)



def batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
  """PyTorch's ``BatchNorm2d`` defaults (its momentum 0.1 is Flax's 0.9, epsilon 1e-5): batch
  statistics when ``train``, else the running averages in ``'batch_stats'`` (float32: Flax
  reduces in at least float32 whatever the compute dtype)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


class ResNetStem(nn.Module):
  """Conv 3x3 stride 1 (no bias) + BatchNorm + ReLU, with no max-pool."""
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype)(x)
    return nn.relu(batch_norm(train, self.dtype)(x))


class BasicBlock(nn.Module):
  """The ResNet-18/34 residual block: two 3x3 convs with BatchNorm; 1x1 conv projection
  (with BatchNorm) on the shortcut when the stride or the channel count changes."""
  features: int
  strides: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    y = nn.Conv(self.features, (3, 3), strides=self.strides, padding=1, use_bias=False,
                kernel_init=conv_init, dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, self.dtype)(y))
    y = nn.Conv(self.features, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                dtype=self.dtype)(y)
    y = batch_norm(train, self.dtype)(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                  kernel_init=conv_init, dtype=self.dtype)(x)
      x = batch_norm(train, self.dtype)(x)
    return nn.relu(x + y)


class ResNetLayer(nn.Module):
  """A sequence of :class:`BasicBlock` s; the first one applies ``strides``."""
  features: int
  num_blocks: int = 2
  strides: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    for i in range(self.num_blocks):
      x = BasicBlock(self.features, strides=self.strides if i == 0 else 1,
                     dtype=self.dtype)(x, train=train)
    return x


class ResNet18(StagedEncoder):
  """ResNet-18 (He et al. 2016) with a stem for small images, as used by Wu et al. (2022).

  BasicBlocks ``[2, 2, 2, 2]`` with channels ``width * (1, 2, 4, 8)`` and BatchNorm (collection
  ``'batch_stats'``, batch statistics when ``train``, running averages otherwise). The stem is
  one 3x3 stride-1 conv with no max-pool (the CIFAR variant) instead of ImageNet's 7x7/2 conv
  and 3x3/2 max-pool: our inputs are 28x28, which the ImageNet stem would shrink to 7x7 before
  ``layer1`` and to 1x1 by ``layer4``.

  Five stages:

  ====== ======== ================ ========= ===========
  stage  name     stride (first)   channels  28x28 input
  ====== ======== ================ ========= ===========
  0      stem     1                width     28x28
  1      layer1   1                width     28x28
  2      layer2   2                2 width   14x14
  3      layer3   2                4 width   7x7
  4      layer4   2                8 width   4x4
  ====== ======== ================ ========= ===========

  ``embed``: global average pool, then ``Dense(features)``.
  """
  width: int = 64
  features: int = 512
  dtype: Any = None

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return (self.width, self.width, 2 * self.width, 4 * self.width, 8 * self.width)

  def setup(self):
    self.stages = (
        ResNetStem(self.width, dtype=self.dtype),
        ResNetLayer(self.width, strides=1, dtype=self.dtype),
        ResNetLayer(2 * self.width, strides=2, dtype=self.dtype),
        ResNetLayer(4 * self.width, strides=2, dtype=self.dtype),
        ResNetLayer(8 * self.width, strides=2, dtype=self.dtype),
    )
    self.head = nn.Dense(self.features, dtype=self.dtype)

  def pool(self, x: Array) -> Array:
    return global_average_pool(x)


#: Encoder name -> module class; :func:`mmjax.models.register_encoder` adds to it.
ENCODERS: dict[str, type[nn.Module]] = {
    'mlp': MLPEncoder,
    'cnn': SmallCNN,
    'resnet18': ResNet18,
}
