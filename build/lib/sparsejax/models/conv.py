"""Plain convolutional networks: LeNet-5, the Conv-2/4/6 of the lottery ticket paper, and VGG-16 with BatchNorm.

Inputs are NHWC images. Param paths: "conv_0/kernel", ..., "dense_0/kernel", ..., "head/kernel" (and "bn_0/scale" for
VGG-16). Kernels default to He init, the init open_lth uses for these networks.

>>> import jax, jax.numpy as jnp
>>> model = conv2(num_classes=10)
>>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
>>> sorted(shapes["params"]), shapes["params"]["dense_0"]["kernel"].shape
(['conv_0', 'conv_1', 'dense_0', 'dense_1', 'head'], (16384, 256))
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models import common

POOL = "M"  # A 2x2 max pool with stride 2 in a layer plan.
CONV2_PLAN = (64, 64, POOL)
CONV4_PLAN = (64, 64, POOL, 128, 128, POOL)
CONV6_PLAN = (64, 64, POOL, 128, 128, POOL, 256, 256, POOL)
VGG16_PLAN = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL)


def _max_pool(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))


def _flatten(x: jax.Array) -> jax.Array:
  return x.reshape((x.shape[0], -1))


class LeNet5(nn.Module):
  """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, as in the lottery-ticket literature's re-implementations.

  conv 6@5x5 (padding 2, so 28x28 inputs act like the original 32x32) -> pool -> conv 16@5x5 (valid) -> pool ->
  dense 120 -> dense 84 -> head. 61,706 params for 28x28x1 inputs and 10 classes.
  """
  num_classes: int
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout; the argument keeps one call signature across the zoo.
    common.check_images("lenet5", x)
    x = jnp.asarray(x, self.dtype)
    x = _max_pool(nn.relu(common.conv(x, 6, 5, "conv_0", self.kernel_init, self.dtype, padding=2)))
    x = _max_pool(nn.relu(common.conv(x, 16, 5, "conv_1", self.kernel_init, self.dtype, padding=0)))
    x = _flatten(x)
    x = nn.relu(common.dense(x, 120, "dense_0", self.kernel_init, self.dtype))
    x = nn.relu(common.dense(x, 84, "dense_1", self.kernel_init, self.dtype))
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


class ConvNet(nn.Module):
  """3x3 convolutions (with bias, ReLU) and max pools following `plan`, then ReLU dense layers and a linear head.

  With the plans above and dense widths (256, 256) this is Conv-2/4/6 of Frankle & Carbin (2019), "The Lottery Ticket
  Hypothesis", Figure 2: 4.3M / 2.4M / 1.7M params on CIFAR-10.

  Attributes:
    num_classes: number of logits.
    plan: conv widths, with `POOL` ("M") for a 2x2 max pool.
    dense_widths: hidden dense widths after flattening.
    kernel_init: 'lecun' | 'torch' | 'he'.
    dtype: computation dtype; params stay float32.
  """
  num_classes: int
  plan: Sequence[Any] = CONV2_PLAN
  dense_widths: Sequence[int] = (256, 256)
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout; the argument keeps one call signature across the zoo.
    common.check_images("ConvNet", x)
    x = jnp.asarray(x, self.dtype)
    convs = 0
    for item in self.plan:
      if item == POOL:
        x = _max_pool(x)
      else:
        x = nn.relu(common.conv(x, item, 3, f"conv_{convs}", self.kernel_init, self.dtype))
        convs += 1
    x = _flatten(x)
    for i, width in enumerate(self.dense_widths):
      x = nn.relu(common.dense(x, width, f"dense_{i}", self.kernel_init, self.dtype))
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


class VGG(nn.Module):
  """VGG (Simonyan & Zisserman 2015) for CIFAR: 3x3 conv -> BatchNorm -> ReLU per plan entry, global average pool, head.

  The CIFAR variant of Frankle & Carbin (2019) and open_lth: no 4096-wide dense layers; after five pools a 32x32 input
  is 1x1, so the global average pool only matters for larger inputs. Convs have no bias (BatchNorm follows).
  """
  num_classes: int
  plan: Sequence[Any] = VGG16_PLAN
  kernel_init: str = "he"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    common.check_images("VGG", x)
    x = jnp.asarray(x, self.dtype)
    convs = 0
    for item in self.plan:
      if item == POOL:
        x = _max_pool(x)
      else:
        x = common.conv(x, item, 3, f"conv_{convs}", self.kernel_init, self.dtype, use_bias=False)
        x = nn.relu(common.batch_norm(x, train, f"bn_{convs}", self.dtype))
        convs += 1
    x = jnp.mean(x, axis=(1, 2))
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


def lenet5(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> LeNet5:
  """LeNet-5; see `LeNet5`."""
  num_classes, dtype = common.check_common("lenet5", num_classes, kernel_init, dtype)
  return LeNet5(num_classes=num_classes, kernel_init=kernel_init, dtype=dtype)


def _conv_net(model: str, plan: Sequence[Any], num_classes: int, kernel_init: str, dtype: Any) -> ConvNet:
  num_classes, dtype = common.check_common(model, num_classes, kernel_init, dtype)
  return ConvNet(num_classes=num_classes, plan=plan, dense_widths=(256, 256), kernel_init=kernel_init, dtype=dtype)


def conv2(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> ConvNet:
  """Conv-2 (Frankle & Carbin 2019): 64, 64, pool, dense 256, 256, head."""
  return _conv_net("conv2", CONV2_PLAN, num_classes, kernel_init, dtype)


def conv4(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> ConvNet:
  """Conv-4 (Frankle & Carbin 2019): 64, 64, pool, 128, 128, pool, dense 256, 256, head."""
  return _conv_net("conv4", CONV4_PLAN, num_classes, kernel_init, dtype)


def conv6(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> ConvNet:
  """Conv-6 (Frankle & Carbin 2019): 64, 64, pool, 128, 128, pool, 256, 256, pool, dense 256, 256, head."""
  return _conv_net("conv6", CONV6_PLAN, num_classes, kernel_init, dtype)


def vgg16(num_classes: int, *, kernel_init: str = "he", dtype: Any = "float32") -> VGG:
  """VGG-16 with BatchNorm for CIFAR (13 convs; Simonyan & Zisserman 2015, Frankle & Carbin 2019)."""
  num_classes, dtype = common.check_common("vgg16", num_classes, kernel_init, dtype)
  return VGG(num_classes=num_classes, plan=VGG16_PLAN, kernel_init=kernel_init, dtype=dtype)
