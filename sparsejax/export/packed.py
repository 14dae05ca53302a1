"""Sparse params out of sparsejax: `strip` to plain params, and a compressed file that `load` restores bit for bit.

A packed file is one `.npz` archive: a JSON header (format version, library version, and per leaf its path, shape,
dtype and encoding) and the arrays of each leaf. A prunable leaf is stored in the smallest of three encodings:

- `dense`: every element;
- `bitmask`: one bit per element (`np.packbits`, set where the element's bits are not all zero) and the values there;
- `nm`: for a leaf with at most n nonzeros in every group of m along its input axis
  (`sparsejax.granularity.input_axis`), exactly n values per group and each one's position in its group, packed in
  ceil(log2 m) bits (2:4: 2 bits per kept value, the metadata layout of sparse tensor cores).

Other leaves are dense. The archive is zip-deflated by default, which shrinks the mostly-zero bitmask of a very
sparse leaf several times more. Values are stored as their raw bits (a -0.0 or a NaN comes back as it went in, and
bfloat16 needs no numpy support), so `load(save(params))` equals params exactly, dtype included.

>>> import os, tempfile
>>> kernel = np.where(np.arange(12).reshape(4, 3) % 4 == 0, 1.5, 0.0).astype(np.float32)
>>> params = {"dense": {"kernel": kernel, "bias": np.ones(3, np.float32)}}
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> [leaf["encoding"] for leaf in save(path, params)["leaves"]]
['dense', 'bitmask']
>>> restored = load(path)
>>> np.array_equal(restored["dense"]["kernel"], kernel), restored["dense"]["kernel"].dtype
(True, dtype('float32'))
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import jax
import ml_dtypes
import numpy as np

from sparsejax import granularity as granularity_lib, masks as masks_lib
from sparsejax.version import __version__

PyTree = Any
FORMAT = "sparsejax.packed"
FORMAT_VERSION = 1
HEADER = "header"


def strip(params: PyTree, masks: PyTree) -> PyTree:
  """Plain params with exact (+0.0) zeros where `masks` is False; leaves without a mask unchanged.

  `masks` is the tree `sj.get_masks(opt_state)` gives (bool arrays, None where not prunable). Flax NNX Variables are
  unwrapped, so the result is a tree of arrays any framework can save.
  """
  return masks_lib.apply_masks(params, masks)


def _raw(x: np.ndarray) -> np.ndarray:
  """The elements of `x` as unsigned integers of the same width (a float's bits), flat."""
  flat = np.ascontiguousarray(x).reshape(-1)
  return flat.view(np.dtype(f"u{flat.dtype.itemsize}"))


def _index_bits(m: int) -> int:
  return max(1, math.ceil(math.log2(m)))


def _pack_indices(idx: np.ndarray, bits: int) -> np.ndarray:
  """Positions (< 2**bits) packed `bits` to a value, most significant bit first."""
  unpacked = np.unpackbits(idx.astype(np.uint8).reshape(-1, 1), axis=1)[:, 8 - bits:]
  return np.packbits(unpacked.reshape(-1))


def _unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
  unpacked = np.unpackbits(packed, count=count * bits).reshape(count, bits)
  return (unpacked.astype(np.int64) << np.arange(bits - 1, -1, -1)).sum(axis=1)


def _groups(shape: Sequence[int], axis: int, m: int) -> Optional[tuple]:
  """(moved shape, number of groups) of n:m groups along `axis`, or None when its length is not a multiple of m."""
  if not shape or shape[axis] % m:
    return None
  moved = tuple(np.delete(np.asarray(shape), axis)) + (shape[axis],)
  return moved, int(np.prod(shape)) // m


def encode_nm(x: np.ndarray, n: int, m: int, axis: int) -> Optional[dict]:
  """The n:m encoding of `x` ({"values", "index"}), or None when a group of m along `axis` holds more than n
  nonzeros (or the axis is not a multiple of m). Groups with fewer keep zeros at their first free positions."""
  if m > 256 or not 0 < n <= m or _groups(x.shape, axis, m) is None:
    return None
  raw = _raw(np.moveaxis(x, axis, -1)).reshape(-1, m)
  nonzero = raw != 0
  if (nonzero.sum(axis=1) > n).any():
    return None
  # Nonzeros first, then zeros, each in position order; the n chosen positions of a group sorted ascending.
  idx = np.sort(np.argsort(~nonzero, axis=1, kind="stable")[:, :n], axis=1)
  return {"values": np.take_along_axis(raw, idx, axis=1).reshape(-1), "index": _pack_indices(idx, _index_bits(m))}


def decode_nm(arrays: dict, shape, dtype, n: int, m: int, axis: int) -> np.ndarray:
  moved, groups = _groups(shape, axis, m)
  idx = _unpack_indices(arrays["index"], _index_bits(m), groups * n).reshape(groups, n)
  raw = np.zeros((groups, m), np.dtype(f"u{np.dtype(dtype).itemsize}"))
  np.put_along_axis(raw, idx, arrays["values"].reshape(groups, n), axis=1)
  return np.moveaxis(raw.view(dtype).reshape(moved), -1, axis)


def encode_bitmask(x: np.ndarray) -> dict:
  raw = _raw(x)
  keep = raw != 0
  return {"bits": np.packbits(keep), "values": raw[keep]}


def decode_bitmask(arrays: dict, shape, dtype) -> np.ndarray:
  size = int(np.prod(shape))
  keep = np.unpackbits(arrays["bits"], count=size).astype(bool)
  raw = np.zeros(size, np.dtype(f"u{np.dtype(dtype).itemsize}"))
  raw[keep] = arrays["values"]
  return raw.view(dtype).reshape(shape)


def _nbytes(arrays: dict) -> int:
  return sum(a.nbytes for a in arrays.values())


def _parse_nm(nm) -> Optional[tuple[int, int]]:
  if nm is None:
    return None
  n, m = (int(v) for v in (nm.split(":") if isinstance(nm, str) else nm))
  if not 0 < n <= m or m > 256:
    raise ValueError(f"nm: got {nm!r}; accepted values: None or 'N:M' with 0 < N <= M <= 256, e.g. '2:4'")
  return n, m


def encode_leaf(path: str, x: np.ndarray, prunable: bool, nm=None, layout: str = "flax") -> tuple[dict, dict]:
  """(header entry, arrays) of one leaf: the smallest encoding that restores it exactly (n:m wins a tie)."""
  entry = {"path": path, "shape": list(x.shape), "dtype": np.dtype(x.dtype).name, "encoding": "dense"}
  best = {"dense": np.ascontiguousarray(x).reshape(-1).view(np.uint8)}
  if not prunable or x.dtype.itemsize > 8 or x.size == 0:
    return entry, best
  candidates = [("dense", best, {}), ("bitmask", encode_bitmask(x), {})]
  if nm is not None:
    axis = granularity_lib.input_axis(layout, path, x.shape)
    arrays = encode_nm(x, *nm, axis)
    if arrays is not None:
      candidates.append(("nm", arrays, {"n": nm[0], "m": nm[1], "axis": axis}))
  rank = {"nm": 0, "bitmask": 1, "dense": 2}
  encoding, arrays, extra = min(candidates, key=lambda c: (_nbytes(c[1]), rank[c[0]]))
  return dict(entry, encoding=encoding, **extra), arrays


def _dtype(name: str) -> np.dtype:
  """A dtype from its name, numpy's or ml_dtypes' (bfloat16, float8_e4m3fn, ...)."""
  try:
    return np.dtype(name)
  except TypeError:
    return np.dtype(getattr(ml_dtypes, name))


def decode_leaf(entry: dict, arrays: dict) -> np.ndarray:
  shape, dtype = tuple(entry["shape"]), _dtype(entry["dtype"])
  if entry["encoding"] == "dense":
    return arrays["dense"].view(dtype).reshape(shape)
  if entry["encoding"] == "bitmask":
    return decode_bitmask(arrays, shape, dtype)
  if entry["encoding"] == "nm":
    return decode_nm(arrays, shape, dtype, entry["n"], entry["m"], entry["axis"])
  raise ValueError(f"{entry['path']}: unknown encoding {entry['encoding']!r}")


def _leaves(params: PyTree, masks: PyTree) -> list[tuple[tuple, np.ndarray, bool]]:
  """(path keys, host array, prunable) per leaf; prunable: a mask is given (None: the default prunable rule)."""
  params = masks_lib.pure(params)
  if masks is None:
    masks = masks_lib.create_masks(params)
  else:
    params = strip(params, masks)
  with_masks = jax.tree.map(lambda m, p: (m is not None, p), masks_lib.pure(masks), params, is_leaf=masks_lib.is_none)
  flat, _ = jax.tree_util.tree_flatten_with_path(with_masks, is_leaf=lambda x: isinstance(x, tuple))
  return [(masks_lib.path_keys(kp), np.asarray(jax.device_get(x)), bool(m)) for kp, (m, x) in flat]


def save(path: str, params: PyTree, masks: PyTree = None, nm=None, layout: str = "flax",
         compress: bool = True) -> dict:
  """Writes params to `path` (an .npz archive) in the packed form; returns its header.

  Args:
    path: the file to write (numpy adds `.npz` when the name has another ending).
    params: the params tree (dicts, FrozenDict, NNX state), on host or device; jax arrays are fetched.
    masks: the mask tree (`sj.get_masks(opt_state)`): params are stripped with it first and only its masked leaves get
      sparse encodings. None: the default prunable leaves (kernels, not biases or embeddings), as they are.
    nm: 'N:M' (or (N, M)) to try the n:m encoding on each prunable leaf, groups along the input axis of `layout`.
    layout: 'flax' | 'torch': which axis is a kernel's input axis for n:m (`sparsejax.granularity.input_axis`).
    compress: zip-deflate the archive's members (`np.savez_compressed`): the bitmask of a very sparse leaf is mostly
      zero bytes, and deflate shrinks it several times (`experiments/bench_export.py`); False writes `np.savez`.
  """
  nm = _parse_nm(nm)
  entries, arrays = [], {}
  for i, (keys, x, prunable) in enumerate(_leaves(params, masks)):
    entry, leaf_arrays = encode_leaf("/".join(keys), x, prunable, nm, layout)
    entries.append(dict(entry, keys=list(keys)))
    arrays.update({f"{i}.{name}": a for name, a in leaf_arrays.items()})
  header = {"format": FORMAT, "format_version": FORMAT_VERSION, "sparsejax_version": __version__, "layout": layout,
            "leaves": entries}
  arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  (np.savez_compressed if compress else np.savez)(os.fspath(path), **arrays)
  return header


def read_header(path: str) -> dict:
  with np.load(os.fspath(path)) as archive:
    return _header(archive, path)


def _header(archive, path) -> dict:
  header = json.loads(archive[HEADER].tobytes()) if HEADER in archive.files else {}
  if header.get("format") != FORMAT or header.get("format_version", 0) > FORMAT_VERSION:
    raise ValueError(f"{os.fspath(path)}: not a {FORMAT} archive of version <= {FORMAT_VERSION} (format "
                     f"{header.get('format')!r}, version {header.get('format_version')!r})")
  return header


def load(path: str, like: PyTree = None) -> PyTree:
  """The dense params saved at `path`, as numpy arrays, bit for bit.

  Args:
    path: a file written by `save`.
    like: a tree to restore into (its structure; leaves are matched by path). None: nested dicts of the path keys.
  """
  with np.load(os.fspath(path)) as archive:
    header = _header(archive, path)
    by_path = {}
    for i, entry in enumerate(header["leaves"]):
      prefix = f"{i}."
      arrays = {name[len(prefix):]: archive[name] for name in archive.files if name.startswith(prefix)}
      by_path[tuple(entry["keys"])] = decode_leaf(entry, arrays)
  if like is None:
    return _nest(by_path)
  flat, treedef = jax.tree_util.tree_flatten_with_path(masks_lib.pure(like))
  keys = [masks_lib.path_keys(kp) for kp, _ in flat]
  if set(keys) != set(by_path):
    raise ValueError(f"load(like=...): the file holds {sorted('/'.join(k) for k in by_path)}, the tree "
                     f"{sorted('/'.join(k) for k in keys)}")
  return jax.tree_util.tree_unflatten(treedef, [by_path[k] for k in keys])


def _nest(by_path: dict) -> dict:
  out: dict = {}
  for keys, value in by_path.items():
    node = out
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = value
  return out
