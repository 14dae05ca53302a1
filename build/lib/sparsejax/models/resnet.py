"""Residual networks with BatchNorm: CIFAR ResNet-20, ResNet-18/50 and Wide ResNet-22-2.

Param paths: "stem_conv/kernel", "stem_bn/scale", "stage{s}_block{b}/conv_{i}/kernel" (and "bn_{i}", "shortcut_conv",
"shortcut_bn"), "head/kernel"; stages and blocks count from 0. Running statistics live in the "batch_stats" collection,
so training applies the model with `mutable=["batch_stats"]`. Kernels default to He init (He et al. 2015), as in the
original papers, torchvision and open_lth.

>>> import jax, jax.numpy as jnp
>>> model = resnet20(num_classes=10)
>>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
>>> sorted(shapes), shapes["params"]["head"]["kernel"].shape
(['batch_stats', 'params'], (64, 10))
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models import common

SHORTCUTS = ("projection", "pad")


def _shortcut(x: jax.Array, y: jax.Array, strides: int, kind: str, train: bool, kernel_init: str,
              dtype: Any) -> jax.Array:
  """The residual branch's input reshaped like the block output `y`, if it needs to be.

  'projection' is option B of He et al. (2016): a strided 1x1 conv and BatchNorm. 'pad' is their option A, used for
  the CIFAR ResNets of the paper: subsample by the stride and zero-pad the new channels, adding no params.
  """
  if x.shape == y.shape:
    return x
  if kind == "projection":
    x = common.conv(x, y.shape[-1], 1, "shortcut_conv", kernel_init, dtype, strides=strides, padding=0,
                    use_bias=False)
    return common.batch_norm(x, train, "shortcut_bn", dtype)
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, y.shape[-1] - x.shape[-1])))


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers and a skip connection (He et al. 2016, "Deep Residual Learning", Figure 2)."""
  features: int
  strides: int = 1
  shortcut: str = "projection"
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = common.conv(x, self.features, 3, "conv_0", self.kernel_init, self.dtype, strides=self.strides, use_bias=False)
    y = nn.relu(common.batch_norm(y, train, "bn_0", self.dtype))
    y = common.conv(y, self.features, 3, "conv_1", self.kernel_init, self.dtype, use_bias=False)
    y = common.batch_norm(y, train, "bn_1", self.dtype)
    return nn.relu(y + _shortcut(x, y, self.strides, self.shortcut, train, self.kernel_init, self.dtype))


class BottleneckBlock(nn.Module):
  """1x1 -> 3x3 -> 1x1 (4x wider) conv-BN layers and a skip connection (He et al. 2016, Figure 5).

  The stride sits on the 3x3 conv, as in torchvision's "ResNet v1.5".
  """
  features: int
  strides: int = 1
  shortcut: str = "projection"
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = common.conv(x, self.features, 1, "conv_0", self.kernel_init, self.dtype, use_bias=False)
    y = nn.relu(common.batch_norm(y, train, "bn_0", self.dtype))
    y = common.conv(y, self.features, 3, "conv_1", self.kernel_init, self.dtype, strides=self.strides, use_bias=False)
    y = nn.relu(common.batch_norm(y, train, "bn_1", self.dtype))
    y = common.conv(y, 4 * self.features, 1, "conv_2", self.kernel_init, self.dtype, use_bias=False)
    y = common.batch_norm(y, train, "bn_2", self.dtype)
    return nn.relu(y + _shortcut(x, y, self.strides, self.shortcut, train, self.kernel_init, self.dtype))


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(nn.Module):
  """ResNet (He et al. 2016): stem, stages of residual blocks (the first block of every later stage halves the
  resolution), global average pool, linear head.

  Attributes:
    num_classes: number of logits.
    stage_sizes: blocks per stage.
    widths: block width per stage; the stem has widths[0] channels.
    block: 'basic' or 'bottleneck'.
    small_input: a 3x3 stride-1 stem without max pool (CIFAR-sized inputs) instead of the ImageNet stem
      (7x7 stride-2 conv and 3x3 stride-2 max pool).
    shortcut: 'projection' or 'pad' (see `_shortcut`).
    kernel_init: 'lecun' | 'torch' | 'he'.
    dtype: computation dtype; params stay float32.
  """
  num_classes: int
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  block: str = "basic"
  small_input: bool = False
  shortcut: str = "projection"
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    common.check_images("ResNet", x)
    common.check_choice("ResNet", "block", self.block, tuple(BLOCKS))
    common.check_choice("ResNet", "shortcut", self.shortcut, SHORTCUTS)
    x = jnp.asarray(x, self.dtype)
    kernel = 3 if self.small_input else 7
    stride = 1 if self.small_input else 2
    x = common.conv(x, self.widths[0], kernel, "stem_conv", self.kernel_init, self.dtype, strides=stride,
                    use_bias=False)
    x = nn.relu(common.batch_norm(x, train, "stem_bn", self.dtype))
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for s, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(num_blocks):
        strides = 2 if s > 0 and b == 0 else 1
        block = BLOCKS[self.block](features=width, strides=strides, shortcut=self.shortcut,
                                   kernel_init=self.kernel_init, dtype=self.dtype, name=f"stage{s}_block{b}")
        x = block(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


class WideBlock(nn.Module):
  """Pre-activation block of Wide ResNets: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the input.

  As in the authors' code, a block that changes shape feeds the pre-activated input to its 1x1 shortcut conv.
  """
  features: int
  strides: int = 1
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = nn.relu(common.batch_norm(x, train, "bn_0", self.dtype))
    y = common.conv(pre, self.features, 3, "conv_0", self.kernel_init, self.dtype, strides=self.strides,
                    use_bias=False)
    y = nn.relu(common.batch_norm(y, train, "bn_1", self.dtype))
    y = common.conv(y, self.features, 3, "conv_1", self.kernel_init, self.dtype, use_bias=False)
    if x.shape == y.shape:
      return y + x
    return y + common.conv(pre, self.features, 1, "shortcut_conv", self.kernel_init, self.dtype,
                           strides=self.strides, padding=0, use_bias=False)


class WideResNet(nn.Module):
  """WRN-depth-width (Zagoruyko & Komodakis 2016, "Wide Residual Networks"), without dropout.

  3x3 stem conv with 16 channels, three stages of (depth - 4) / 6 `WideBlock`s with 16k, 32k, 64k channels (the last
  two start with stride 2), final BN-ReLU, global average pool, linear head.
  """
  num_classes: int
  depth: int = 22
  width: int = 2
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    common.check_images("WideResNet", x)
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1, got {self.depth}")
    x = jnp.asarray(x, self.dtype)
    x = common.conv(x, 16, 3, "stem_conv", self.kernel_init, self.dtype, use_bias=False)
    for s, base in enumerate((16, 32, 64)):
      for b in range((self.depth - 4) // 6):
        strides = 2 if s > 0 and b == 0 else 1
        block = WideBlock(features=base * self.width, strides=strides, kernel_init=self.kernel_init, dtype=self.dtype,
                          name=f"stage{s}_block{b}")
        x = block(x, train)
    x = nn.relu(common.batch_norm(x, train, "final_bn", self.dtype))
    x = jnp.mean(x, axis=(1, 2))
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


def resnet20(num_classes: int, *, shortcut: str = "projection", kernel_init: str = "he",
             dtype: Any = "float32") -> ResNet:
  """CIFAR ResNet-20 (He et al. 2016, section 4.2): 3 stages of 3 basic blocks, 16/32/64 channels.

  shortcut='projection' (1x1 conv + BN, as in open_lth and the lottery-ticket papers that use it) gives 272,474
  params for 10 classes; shortcut='pad' (the paper's option A) gives 269,722.
  """
  num_classes, dtype = common.check_common("resnet20", num_classes, kernel_init, dtype)
  common.check_choice("resnet20", "shortcut", shortcut, SHORTCUTS)
  return ResNet(num_classes=num_classes, stage_sizes=(3, 3, 3), widths=(16, 32, 64), block="basic",
                small_input=True, shortcut=shortcut, kernel_init=kernel_init, dtype=dtype)


def _imagenet_resnet(model: str, block: str, stage_sizes: Sequence[int], num_classes: int, small_input: bool,
                     kernel_init: str, dtype: Any) -> ResNet:
  num_classes, dtype = common.check_common(model, num_classes, kernel_init, dtype)
  small_input = common.check_bool(model, "small_input", small_input)
  return ResNet(num_classes=num_classes, stage_sizes=stage_sizes, widths=(64, 128, 256, 512), block=block,
                small_input=small_input, shortcut="projection", kernel_init=kernel_init, dtype=dtype)


def resnet18(num_classes: int, *, small_input: bool = False, kernel_init: str = "he",
             dtype: Any = "float32") -> ResNet:
  """ResNet-18 (He et al. 2016): basic blocks (2, 2, 2, 2); small_input=True for 32x32 images (3x3 stem, no pool).

  11,689,512 params for 1000 classes, as torchvision's resnet18.
  """
  return _imagenet_resnet("resnet18", "basic", (2, 2, 2, 2), num_classes, small_input, kernel_init, dtype)


def resnet50(num_classes: int, *, small_input: bool = False, kernel_init: str = "he",
             dtype: Any = "float32") -> ResNet:
  """ResNet-50 (He et al. 2016): bottleneck blocks (3, 4, 6, 3); small_input=True for 32x32 images.

  25,557,032 params for 1000 classes, as torchvision's resnet50.
  """
  return _imagenet_resnet("resnet50", "bottleneck", (3, 4, 6, 3), num_classes, small_input, kernel_init, dtype)


def wrn22_2(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> WideResNet:
  """Wide ResNet-22-2 (Zagoruyko & Komodakis 2016): 3 blocks per stage, 32/64/128 channels; 1,079,642 params for 10
  classes."""
  num_classes, dtype = common.check_common("wrn22_2", num_classes, kernel_init, dtype)
  return WideResNet(num_classes=num_classes, depth=22, width=2, kernel_init=kernel_init, dtype=dtype)
