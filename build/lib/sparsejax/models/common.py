"""Layers, initializers and argument checks shared by the model zoo.

Every model builds its layers through `dense`, `conv` and `batch_norm` so that one `kernel_init` string picks the
initializer of the whole network and the param paths keep the explicit names the models give ("conv_0/kernel").
Params are always float32; `dtype` only sets the computation dtype.

>>> import jax
>>> init = torch_kernel_init()
>>> w = jax.jit(init, static_argnums=1)(jax.random.key(0), (100, 10))
>>> bool(abs(w).max() <= 0.1)
True
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]

KERNEL_INITS = ("lecun", "torch", "he")
ACTIVATIONS = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
}
# BatchNorm settings equal to PyTorch's defaults (torch momentum 0.1 is flax momentum 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def torch_kernel_init() -> Initializer:
  """PyTorch's default `nn.Linear` / `nn.ConvNd` kernel init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  PyTorch calls kaiming_uniform_(a=sqrt(5)), whose bound gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + 5)) is
  exactly 1 / sqrt(fan_in); variance scaling with scale 1/3 gives the same bound, sqrt(3 * scale / fan_in). Flax kernels
  are (..spatial.., in, out), so fan_in = in * prod(spatial), as in PyTorch.
  """
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in taken from the layer's kernel.

  A Flax bias initializer only sees the bias shape, so the fan-in of the kernel is bound here.
  """
  if fan_in < 1:
    raise ValueError(f"fan_in must be >= 1, got {fan_in}")
  bound = 1.0 / np.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

  return init


def kernel_initializer(name: str) -> Initializer:
  """'lecun' (Flax default, truncated normal), 'torch' (see `torch_kernel_init`) or 'he' (He et al. 2015, normal)."""
  if name == "lecun":
    return nn.initializers.lecun_normal()
  if name == "torch":
    return torch_kernel_init()
  if name == "he":
    return nn.initializers.variance_scaling(2.0, "fan_in", "normal")
  raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {name!r}")


def bias_initializer(name: str, fan_in: int) -> Initializer:
  """Zeros, except for the 'torch' init, which draws biases like PyTorch does."""
  return torch_bias_init(fan_in) if name == "torch" else nn.initializers.zeros_init()


def dense(x: jax.Array, features: int, name: str, kernel_init: str, dtype: Any) -> jax.Array:
  """A `nn.Dense` named `name` whose kernel and bias follow `kernel_init`."""
  fan_in = x.shape[-1]
  layer = nn.Dense(features, kernel_init=kernel_initializer(kernel_init),
                   bias_init=bias_initializer(kernel_init, fan_in), dtype=dtype, param_dtype=jnp.float32, name=name)
  return layer(x)


def conv(x: jax.Array, features: int, kernel_size: int, name: str, kernel_init: str, dtype: Any, *,
         strides: int = 1, padding: int | None = None, use_bias: bool = True) -> jax.Array:
  """A square `nn.Conv` on NHWC input.

  Padding is symmetric, `kernel_size // 2` unless given, as in PyTorch: Flax's 'SAME' pads strided convolutions
  asymmetrically, which would shift every feature map against the published architectures.
  """
  pad = kernel_size // 2 if padding is None else padding
  fan_in = x.shape[-1] * kernel_size * kernel_size
  layer = nn.Conv(features, (kernel_size, kernel_size), strides=(strides, strides), padding=((pad, pad), (pad, pad)),
                  use_bias=use_bias, kernel_init=kernel_initializer(kernel_init),
                  bias_init=bias_initializer(kernel_init, fan_in), dtype=dtype, param_dtype=jnp.float32, name=name)
  return layer(x)


def batch_norm(x: jax.Array, train: bool, name: str, dtype: Any) -> jax.Array:
  """BatchNorm with batch statistics in training and running averages (collection 'batch_stats') in evaluation."""
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                      param_dtype=jnp.float32, name=name)(x)


def check_images(model: str, x: jax.Array) -> None:
  """Convolutional models take NHWC images; a clear message beats an XLA shape error deep inside a conv."""
  if x.ndim != 4:
    raise ValueError(f"{model} expects NHWC images of shape (N, H, W, C), got an input of shape {x.shape}")


def check_choice(model: str, field: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f"{model}: {field} must be one of {tuple(choices)}, got {value!r}")


def check_positive_int(model: str, field: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{model}: {field} must be a positive int, got {value!r}")
  return int(value)


def check_bool(model: str, field: str, value: Any) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{model}: {field} must be True or False, got {value!r}")
  return bool(value)


def resolve_dtype(model: str, value: Any) -> jnp.dtype:
  """A computation dtype from a name ('bfloat16') or a dtype; only floating dtypes make sense for activations."""
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise ValueError(f"{model}: dtype must be a floating dtype such as 'float32' or 'bfloat16', got {value!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{model}: dtype must be a floating dtype such as 'float32' or 'bfloat16', got {value!r}")
  return dtype


def check_common(model: str, num_classes: Any, kernel_init: str, dtype: Any) -> tuple[int, jnp.dtype]:
  """Checks the arguments every model takes; returns the normalised num_classes and dtype."""
  num_classes = check_positive_int(model, "num_classes", num_classes)
  check_choice(model, "kernel_init", kernel_init, KERNEL_INITS)
  return num_classes, resolve_dtype(model, dtype)


def logits(x: jax.Array) -> jax.Array:
  """Logits leave the model in float32 so the loss is computed at full precision whatever the compute dtype."""
  return jnp.asarray(x, jnp.float32)
