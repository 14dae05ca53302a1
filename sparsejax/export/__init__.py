"""Export: sparse params out of sparsejax, smaller than they went in.

- `strip(params, masks)`: plain params with exact zeros where the masks prune.
- `save(path, params, masks)` / `load(path)`: a packed file (bitmask or n:m index metadata plus the nonzero values,
  other leaves dense) that restores the dense params bit for bit (`sparsejax.export.packed`).
- `to_safetensors(params, path)`: a safetensors state dict with PyTorch names and layouts, for MLP and conv models
  (`sparsejax.export.pytorch`).
- `sparse_dense(kernel, bias)`: a pruned Dense layer as a `jax.experimental.sparse.BCOO` matmul
  (`sparsejax.export.bcoo`).
"""
from sparsejax.export.bcoo import SparseDense, sparse_dense
from sparsejax.export.packed import load, read_header, save, strip
from sparsejax.export.pytorch import state_dict, to_safetensors

__all__ = ["load", "read_header", "save", "SparseDense", "sparse_dense", "state_dict", "strip", "to_safetensors"]
