"""Inference of pruned Dense layers with `jax.experimental.sparse`.

`sparse_dense(kernel, bias)` stores a pruned (in, out) kernel as a sparse (out, in) matrix holding only its nonzeros
and applies it as W^T-times-x, the sparse operand on the left. `format='bcoo'` is `sparse.BCOO`, which JAX documents
as a reference implementation (its product is a gather and a scatter-add in XLA); `format='bcsr'` is `sparse.BCSR`,
whose product on CPU lowers to a compiled CSR kernel (`cpu_csr_sparse_dense_ffi`). `experiments/bench_export.py`
measures both against the dense matmul.

>>> import jax.numpy as jnp
>>> kernel = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
>>> layer = sparse_dense(kernel, bias=jnp.array([0.5, 0.5]))
>>> layer.weight.nse, layer(jnp.array([[1.0, 1.0, 1.0]]))
(2, Array([[1.5, 2.5]], dtype=float32))
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

FORMATS = {"bcoo": sparse.BCOO, "bcsr": sparse.BCSR}


class SparseDense(NamedTuple):
  """A Dense layer with a sparse weight: `layer(x) = x @ kernel + bias` for x of shape (..., in).

  weight: the kernel transposed, (out, in), as a BCOO or BCSR matrix of its nonzeros. bias: (out,) or None.
  A pytree: pass it through `jax.jit` as an argument.
  """
  weight: Any
  bias: Optional[jax.Array]

  def __call__(self, x: jax.Array) -> jax.Array:
    out, features = self.weight.shape
    rows = x.reshape(-1, features)
    y = (self.weight @ rows.T).T
    if self.bias is not None:
      y = y + self.bias[None, :]
    return y.reshape(*x.shape[:-1], out)


def sparse_dense(kernel, bias=None, format: str = "bcoo") -> SparseDense:  # pylint: disable=redefined-builtin
  """A pruned Dense layer's (in, out) kernel (zeros where pruned) and bias as a `SparseDense`.

  Only the nonzeros are stored (an exact count, taken on the host: call it outside jit).
  """
  if format not in FORMATS:
    raise ValueError(f"format: got {format!r}; accepted values: {sorted(FORMATS)}")
  kernel = jnp.asarray(kernel)
  if kernel.ndim != 2:
    raise ValueError(f"kernel: a Dense kernel has 2 axes (in, out), got shape {kernel.shape}")
  weight = kernel.T
  nse = int(np.count_nonzero(np.asarray(jax.device_get(weight))))
  return SparseDense(FORMATS[format].fromdense(weight, nse=nse), None if bias is None else jnp.asarray(bias))
