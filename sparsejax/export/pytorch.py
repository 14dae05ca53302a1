"""Flax params as a PyTorch state dict in a safetensors file.

`to_safetensors(params, path)` names each leaf as `torch.nn.Module.state_dict()` would for the same module tree
(`dense_0/kernel` -> `dense_0.weight`) and gives it PyTorch's layout: a Dense kernel (in, out) becomes Linear's
weight (out, in); a convolution kernel (*spatial, in, out) becomes (out, in, *spatial); BatchNorm's
`scale`/`bias` (params) and `mean`/`var` (batch_stats) become `weight`/`bias`/`running_mean`/`running_var`;
LayerNorm's `scale` becomes `weight`; an Embed's `embedding` becomes Embedding's `weight` (same layout). Pruned
weights are exact zeros in a dense tensor, so `model.load_state_dict(safetensors.torch.load_file(path))` loads a
sparse Flax model into a torch module whose submodules have the same names (BatchNorm's `num_batches_tracked`, absent
from Flax, is filled in by torch).

Attention kernels of shape (in, heads, head_dim) have no single PyTorch counterpart and are refused;
ConvTranspose kernels are not distinguished from Conv's (MLP and conv models).

>>> import os, tempfile, numpy as np
>>> from safetensors.numpy import load_file
>>> params = {"dense_0": {"kernel": np.arange(6, dtype=np.float32).reshape(3, 2), "bias": np.zeros(2, np.float32)}}
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> sorted((k, v.shape) for k, v in to_safetensors(params, path).items())
[('dense_0.bias', (2,)), ('dense_0.weight', (2, 3))]
>>> np.array_equal(load_file(path)["dense_0.weight"], params["dense_0"]["kernel"].T)
True
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

import jax
import numpy as np

from sparsejax import masks as masks_lib
from sparsejax.version import __version__

PyTree = Any
# Flax leaf name -> PyTorch parameter or buffer name.
TORCH_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var",
               "embedding": "weight"}
_ATTENTION = re.compile(r"(^|/)(query|key|value|qkv|q_proj|k_proj|v_proj|attn|attention)(/|$)", re.IGNORECASE)


def torch_kernel(path: str, kernel: np.ndarray) -> np.ndarray:
  """A Flax kernel in PyTorch's layout: (in, out) -> (out, in); (*spatial, in, out) -> (out, in, *spatial)."""
  nd = kernel.ndim
  if nd >= 3 and _ATTENTION.search(path):
    raise ValueError(f"{path}: an attention kernel of shape {kernel.shape} has no PyTorch Linear or Conv layout; "
                     "to_safetensors exports MLP and conv models (use layout='flax' to keep Flax's names and shapes)")
  if nd < 2:
    raise ValueError(f"{path}: a kernel needs at least 2 axes, got shape {kernel.shape}")
  return np.transpose(kernel, (nd - 1, nd - 2, *range(nd - 2)))


def state_dict(params: PyTree, batch_stats: PyTree = None, layout: str = "torch") -> dict[str, np.ndarray]:
  """The {name: numpy array} that `to_safetensors` writes (see the module docstring)."""
  if layout not in ("torch", "flax"):
    raise ValueError(f"layout: got {layout!r}; accepted values: ['torch', 'flax']")
  leaves = masks_lib.flatten_with_paths(masks_lib.pure(params))
  if batch_stats is not None:
    leaves += masks_lib.flatten_with_paths(masks_lib.pure(batch_stats))
  out = {}
  for path, x in leaves:
    *module, leaf = path.split("/")
    x = np.asarray(jax.device_get(x))
    if layout == "torch":
      if leaf == "kernel":
        x = torch_kernel(path, x)
      leaf = TORCH_NAMES.get(leaf, leaf)
    name = ".".join(module + [leaf])
    if name in out:
      raise ValueError(f"{path}: two leaves are both named {name!r} in the state dict")
    out[name] = np.ascontiguousarray(x)
  return out


def to_safetensors(params: PyTree, path: str, batch_stats: PyTree = None, layout: str = "torch",
                   metadata: Optional[dict] = None) -> dict[str, np.ndarray]:
  """Writes params (and BatchNorm's batch_stats) to `path` as a safetensors state dict; returns what it wrote.

  Args:
    params: the params tree (strip the masks first: `sj.export.strip(params, masks)`), on host or device.
    path: the .safetensors file to write.
    batch_stats: the "batch_stats" collection of a model with BatchNorm, or None.
    layout: 'torch' (PyTorch names and layouts) | 'flax' (path parts joined by '.', arrays as they are).
    metadata: extra string metadata for the file's header ("format" is set to "pt" for torch, "flax" otherwise).
  """
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top (an optional dependency)
  tensors = state_dict(params, batch_stats, layout)
  unsupported = sorted({str(x.dtype) for x in tensors.values()} - {"float64", "float32", "float16", "int64", "int32",
                                                                   "int16", "int8", "uint8", "bool"})
  if unsupported:
    raise ValueError(f"safetensors.numpy cannot write dtype {unsupported}: cast the params first (e.g. "
                     "jax.tree.map(lambda x: x.astype('float32'), params))")
  header = {"format": "pt" if layout == "torch" else "flax", "exported_by": f"sparsejax {__version__}",
            **(metadata or {})}
  st_numpy.save_file(tensors, os.fspath(path), metadata=header)
  return tensors
