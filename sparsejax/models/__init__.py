"""The model zoo: Flax linen classifiers built by name from a config.

`create_model(config.model.name, num_classes, **other_model_fields)` is the one place a model name is resolved. Every
model is called as `model.apply(variables, x, train=bool)` and returns float32 logits (N, num_classes); models with
BatchNorm keep a "batch_stats" collection (apply with `mutable=["batch_stats"]` when train=True). The GPT is a language
model: int32 tokens (N, T) in, logits (N, T, num_classes) out, num_classes being its vocabulary.
`default_sharding_rules(name)` gives the `config.mesh.rules` a model comes with (the transformers'; () for the rest).

>>> import jax, jax.numpy as jnp
>>> model = create_model("lenet300", num_classes=10)
>>> x = jnp.zeros((2, 28, 28, 1))
>>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only; jax.jit(model.init) makes arrays.
>>> jax.eval_shape(model.apply, variables, x).shape
(2, 10)
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import flax.linen as nn

from sparsejax.models import common, conv, mlp, resnet, transformer
from sparsejax.models.common import torch_bias_init, torch_kernel_init
from sparsejax.models.conv import VGG, ConvNet, LeNet5
from sparsejax.models.mlp import MLP
from sparsejax.models.resnet import ResNet, WideResNet
from sparsejax.models.transformer import GPT, ViT

# Name -> constructor `f(num_classes, **kwargs) -> nn.Module`; each constructor checks its own kwargs' values. The
# modules, not the constructors, are the package attributes, so `sparsejax.models.mlp` stays the module.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp.mlp,
    "lenet300": mlp.lenet300,
    "mnist1d_mlp": mlp.mnist1d_mlp,
    "lenet5": conv.lenet5,
    "conv2": conv.conv2,
    "conv4": conv.conv4,
    "conv6": conv.conv6,
    "vgg16": conv.vgg16,
    "resnet20": resnet.resnet20,
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "wrn22_2": resnet.wrn22_2,
    "vit": transformer.vit,
    "gpt": transformer.gpt,
}
# Name -> the `config.mesh.rules` the engine uses when the config gives none.
SHARDING_RULES: dict[str, tuple] = {name: transformer.sharding_rules(name) for name in ("vit", "gpt")}


def model_kwargs(name: str) -> dict[str, Any]:
  """The keyword arguments model `name` accepts besides num_classes, with their defaults."""
  if name not in MODELS:
    raise ValueError(f"model.name must be one of {sorted(MODELS)}, got {name!r}")
  params = inspect.signature(MODELS[name]).parameters.values()
  return {p.name: p.default for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY}


def default_sharding_rules(name: str) -> tuple:
  """The sharding rules model `name` comes with ((regex, PartitionSpec tuple) pairs; () when it has none)."""
  return SHARDING_RULES.get(name, ())


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name`.

  Args:
    name: a key of `MODELS`.
    num_classes: number of logits.
    **kwargs: model options (see `model_kwargs(name)`), e.g. kernel_init='torch', small_input=True; None means
      the model's default.

  Returns:
    An unbound Flax linen module.

  Raises:
    ValueError: for an unknown name, an option the model does not take, or an option value out of range.
  """
  kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: the model's default (configs/default.py)
  accepted = model_kwargs(name)
  unknown = sorted(set(kwargs) - set(accepted))
  if unknown:
    raise ValueError(f"model {name!r} got unknown option(s) {unknown}; it accepts {sorted(accepted)}")
  return MODELS[name](num_classes, **kwargs)


__all__ = [
    "MODELS", "SHARDING_RULES", "create_model", "default_sharding_rules", "model_kwargs", "torch_kernel_init",
    "torch_bias_init", "MLP", "LeNet5", "ConvNet", "VGG", "ResNet", "WideResNet", "ViT", "GPT", "common", "conv", "mlp",
    "resnet", "transformer",
]
