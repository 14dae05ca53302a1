"""Granularity of pruning: unstructured, n:m, block and channel.

One selection path serves all: scores are pooled to groups (`pool`), groups are selected, and the group mask is expanded
back to the weight's shape (`expand`). n:m (Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks") selects
within each group of m consecutive weights along one axis instead of across the layer (`nm_mask`).

>>> import jax.numpy as jnp
>>> g = parse("block:2x2")
>>> g.pool(jnp.arange(16.0).reshape(4, 4)).tolist()
[[2.5, 4.5], [10.5, 12.5]]
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

import jax.numpy as jnp
import numpy as np

from sparsejax import select

ACCEPTED = ("'unstructured', 'n:m' (e.g. '2:4'), 'block:RxC' (e.g. 'block:4x4'), 'channel', 'head' (attention heads), "
            "'neuron' (MLP hidden units)")


LAYOUTS = ("flax", "torch")
# Flax attention projections into heads: DenseGeneral kernels of shape (in, heads, head_dim).
_HEADS_IN = re.compile(r"(^|/)(query|key|value|qkv|q_proj|k_proj|v_proj)(/|$)")


def input_axis(layout: str, path: str, shape) -> int:
  """The axis a kernel contracts with its input: flax (..., in, out) -> ndim - 2, an attention projection
  (in, heads, head_dim) -> 0; torch (out, in, ...) -> 1. n:m groups run along it."""
  nd = len(shape)
  if nd < 2:
    return 0
  if layout == "torch":
    return 1
  return 0 if nd == 3 and _HEADS_IN.search(path) else nd - 2


def output_axes(layout: str, path: str, shape) -> tuple:
  """The axes that index a kernel's output units: flax (..., out) -> the last, an attention projection
  (in, heads, head_dim) -> (1, 2); torch (out, ...) -> 0. `channel` keeps or prunes each output unit whole."""
  nd = len(shape)
  if nd < 2:
    return (max(nd - 1, 0),)
  if layout == "torch":
    return (0,)
  return (1, 2) if nd == 3 and _HEADS_IN.search(path) else (nd - 1,)


class Granularity(NamedTuple):
  """kind: unstructured | nm | block | channel; n, m for n:m; block (rows, cols).

  axis: the n:m axis (None: the layout's input axis); channel_axis: the output axis for channel (None: the layout's
  output axes); layout: 'flax' (in, out) or 'torch' (out, in). `for_layer` resolves both for one weight; the
  resolved Granularity (out_axes set) is what pool, expand and nm_mask use.
  """
  kind: str
  n: int = 0
  m: int = 0
  block: tuple = (1, 1)
  axis: Optional[int] = None
  layout: str = "flax"
  channel_axis: Optional[int] = None
  out_axes: Optional[tuple] = None

  def for_layer(self, path: str, shape) -> "Granularity":
    """This granularity with its axes resolved for the weight at `path` of `shape` (validated first)."""
    self.check(path, shape)
    nd = len(shape)
    axis = input_axis(self.layout, path, shape) if self.axis is None else self.axis % max(nd, 1)
    out = output_axes(self.layout, path, shape) if self.channel_axis is None else (self.channel_axis % max(nd, 1),)
    return self._replace(axis=axis, out_axes=out)

  def check(self, path: str, shape) -> None:
    """Raise a ValueError if this granularity cannot apply to a layer of `shape`."""
    where = f"config.sparsity.granularity={self.spec()!r} on layer {path} of shape {tuple(shape)}"
    for field, value in (("nm_axis", self.axis), ("channel_axis", self.channel_axis)):
      if value is not None and not -len(shape) <= value < len(shape):
        raise ValueError(f"config.sparsity.{field}={value} on layer {path} of shape {tuple(shape)}: accepted values "
                         f"are None (the layout's {'input' if field == 'nm_axis' else 'output'} axis) or an int in "
                         f"[{-len(shape)}, {len(shape) - 1}]")
    if self.kind == "nm":
      if len(shape) < 1 or shape[self._axis(path, shape)] % self.m:
        raise ValueError(f"{where}: axis length must be a multiple of m={self.m}")
    elif self.kind == "block":
      if len(shape) < 2:
        raise ValueError(f"{where}: block pruning needs ndim >= 2")
      rows, cols = _as_2d(shape)
      if rows % self.block[0] or cols % self.block[1]:
        raise ValueError(f"{where}: the 2-D view {(rows, cols)} is not divisible into {self.block} blocks")

  def spec(self) -> str:
    if self.kind in ("nm", "block"):
      return f"{self.n}:{self.m}" if self.kind == "nm" else f"block:{self.block[0]}x{self.block[1]}"
    return self.kind

  def _axis(self, path: str, shape) -> int:
    return input_axis(self.layout, path, shape) if self.axis is None else self.axis % len(shape)

  def _out(self) -> tuple:
    if self.out_axes is None:
      raise ValueError("granularity: resolve the axes with for_layer(path, shape) first")
    return self.out_axes

  def _reduced(self, ndim: int) -> tuple:
    out = self._out()
    return tuple(a for a in range(ndim) if a not in out)

  def num_groups(self, shape) -> int:
    """Number of groups a layer of `shape` is pooled to (n:m: groups of m)."""
    size = 1
    for d in shape:
      size *= d
    if self.kind == "channel":
      return int(np.prod([shape[a] for a in self._out()]))
    if self.kind == "block":
      return size // (self.block[0] * self.block[1])
    return size // self.m if self.kind == "nm" else size

  def group_size(self, shape) -> int:
    size = 1
    for d in shape:
      size *= d
    return size // max(self.num_groups(shape), 1)

  def pool(self, scores):
    """Group scores (mean over each group), for unstructured, block and channel."""
    if self.kind == "unstructured":
      return scores
    if self.kind == "channel":
      return jnp.mean(scores, axis=self._reduced(scores.ndim))
    rows, cols = _as_2d(scores.shape)
    br, bc = self.block
    return jnp.mean(scores.reshape(rows // br, br, cols // bc, bc), axis=(1, 3))

  def expand(self, group_mask, shape):
    """Weight-shaped mask from a group mask."""
    if self.kind == "unstructured":
      return group_mask
    if self.kind == "channel":
      return jnp.broadcast_to(jnp.expand_dims(group_mask, self._reduced(len(shape))), shape)
    br, bc = self.block
    full = jnp.repeat(jnp.repeat(group_mask, br, axis=0), bc, axis=1)
    return full.reshape(shape)

  def nm_mask(self, scores, keep, eligible=None):
    """Keep the `keep` largest of every m consecutive entries along the axis (ties: lower index first); only
    `eligible` entries (None: all) are kept, so a group with fewer eligible entries keeps fewer."""
    if self.axis is None:
      raise ValueError("granularity: resolve the axes with for_layer(path, shape) first")
    axis = self.axis
    keys = select.sortable_key(scores)
    if eligible is not None:
      keys = jnp.where(eligible, keys, jnp.uint32(0))  # below every real key (>= 1)
    moved = jnp.moveaxis(keys, axis, -1)
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // self.m, self.m))
    a, b = groups[..., :, None], groups[..., None, :]
    idx = jnp.arange(self.m)
    # rank of entry i = number of entries j ranked before it: larger score, or equal score and lower index.
    earlier = (idx[None, :] < idx[:, None]).reshape((1,) * (groups.ndim - 1) + (self.m, self.m))
    before = (b > a) | ((b == a) & earlier)
    rank = jnp.sum(before, axis=-1)
    mask = jnp.moveaxis((rank < keep).reshape(moved.shape), -1, axis)
    return mask if eligible is None else mask & eligible


def _as_2d(shape):
  cols = shape[-1]
  rows = 1
  for d in shape[:-1]:
    rows *= d
  return rows, cols


def parse(spec: str, axis: Optional[int] = None, layout: str = "flax",
          channel_axis: Optional[int] = None) -> Granularity:
  """'unstructured' | 'n:m' | 'block:RxC' | 'channel' -> Granularity; anything else is a ValueError.

  axis: the n:m axis, channel_axis: the output axis of channel pruning (None: from `layout`, 'flax' or 'torch').
  """
  for field, value, what in (("nm_axis", axis, "input"), ("channel_axis", channel_axis, "output")):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
      raise ValueError(f"config.sparsity.{field}: got {value!r}; accepted values: None (the layout's {what} axis) "
                       "or an int axis of the weight")
  if layout not in LAYOUTS:
    raise ValueError(f"config.sparsity.layout: got {layout!r}, which is not one of the accepted values {LAYOUTS}")
  kw = {"axis": axis, "layout": layout, "channel_axis": channel_axis}
  if not isinstance(spec, str):
    raise ValueError(f"config.sparsity.granularity: {spec!r} is not one of {ACCEPTED}")
  if spec in ("unstructured", "channel", "head", "neuron"):  # head, neuron: units across layers (sparsejax.units)
    return Granularity(spec, **kw)
  nm = re.fullmatch(r"(\d+):(\d+)", spec)
  if nm:
    n, m = int(nm.group(1)), int(nm.group(2))
    if not 0 < n <= m:
      raise ValueError(f"config.sparsity.granularity: {spec!r} needs 0 < n <= m")
    return Granularity("nm", n=n, m=m, **kw)
  blk = re.fullmatch(r"block:(\d+)x(\d+)", spec)
  if blk and int(blk.group(1)) > 0 and int(blk.group(2)) > 0:
    return Granularity("block", block=(int(blk.group(1)), int(blk.group(2))), **kw)
  raise ValueError(f"config.sparsity.granularity: {spec!r} is not one of {ACCEPTED}")
