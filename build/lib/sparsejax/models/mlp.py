"""Multilayer perceptrons: a generic MLP, LeNet-300-100 and the MNIST-1D lottery-ticket MLP.

Inputs of any shape (N, ...) are flattened to (N, D). Param paths are "dense_0/kernel", "dense_1/kernel", ... and
"head/kernel" for the output layer.

>>> import jax, jax.numpy as jnp
>>> model = lenet300(num_classes=10)
>>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
>>> {name: layer["kernel"].shape for name, layer in shapes["params"].items()}
{'dense_0': (784, 300), 'dense_1': (300, 100), 'head': (100, 10)}
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models import common


class MLP(nn.Module):
  """Fully connected network: hidden Dense layers with an activation, then a linear head.

  Attributes:
    num_classes: number of logits.
    widths: hidden layer widths, in order.
    activation: a name in `common.ACTIVATIONS`.
    kernel_init: 'lecun' | 'torch' | 'he' (see `common.kernel_initializer`).
    residual: add a skip connection h + act(dense(h)) around every hidden layer after the first whose width equals the
      width before it (Greydanus 2020's MNIST-1D MLP); layers that change width have no skip.
    dtype: computation dtype; params stay float32.
  """
  num_classes: int
  widths: Sequence[int] = (256, 256)
  activation: str = "relu"
  kernel_init: str = "lecun"
  residual: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train  # No BatchNorm or dropout; the argument keeps one call signature across the zoo.
    if x.ndim < 2:
      raise ValueError(f"MLP expects a batch of shape (N, ...), got an input of shape {x.shape}")
    common.check_choice("MLP", "activation", self.activation, tuple(common.ACTIVATIONS))
    act = common.ACTIVATIONS[self.activation]
    x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
    for i, width in enumerate(self.widths):
      h = act(common.dense(x, width, f"dense_{i}", self.kernel_init, self.dtype))
      x = x + h if self.residual and i > 0 and x.shape[-1] == width else h
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


def _check_mlp_args(model: str, num_classes: Any, widths: Any, activation: str, kernel_init: str, residual: Any,
                    dtype: Any) -> dict:
  num_classes, dtype = common.check_common(model, num_classes, kernel_init, dtype)
  common.check_choice(model, "activation", activation, tuple(common.ACTIVATIONS))
  if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
    raise ValueError(f"{model}: widths must be a sequence of positive ints, got {widths!r}")
  widths = tuple(common.check_positive_int(model, "widths", w) for w in widths)
  residual = common.check_bool(model, "residual", residual)
  return dict(num_classes=num_classes, widths=widths, activation=activation, kernel_init=kernel_init,
              residual=residual, dtype=dtype)


def mlp(num_classes: int, *, widths: Sequence[int] = (256, 256), activation: str = "relu", kernel_init: str = "lecun",
        residual: bool = False, dtype: Any = "float32") -> MLP:
  """A generic MLP; see `MLP` for the arguments."""
  return MLP(**_check_mlp_args("mlp", num_classes, widths, activation, kernel_init, residual, dtype))


def lenet300(num_classes: int, *, activation: str = "relu", kernel_init: str = "lecun",
             dtype: Any = "float32") -> MLP:
  """LeNet-300-100 (LeCun et al. 1998), the MNIST network of the lottery ticket paper (Frankle & Carbin 2019).

  Hidden widths 300 and 100; 266,610 params for 784 inputs and 10 classes.
  """
  return MLP(**_check_mlp_args("lenet300", num_classes, (300, 100), activation, kernel_init, False, dtype))


def mnist1d_mlp(num_classes: int, *, width: int = 500, activation: str = "relu", kernel_init: str = "torch",
                dtype: Any = "float32") -> MLP:
  """The MLP of Greydanus, "Scaling down deep learning" (2020), lottery-ticket notebook.

  h = relu(Linear(in, 500)(x)); h = h + relu(Linear(500, 500)(h)); logits = Linear(500, classes)(h). PyTorch's default
  init ('torch') is the default here because the notebook's published numbers were obtained with it.
  """
  width = common.check_positive_int("mnist1d_mlp", "width", width)
  return MLP(**_check_mlp_args("mnist1d_mlp", num_classes, (width, width), activation, kernel_init, True, dtype))
