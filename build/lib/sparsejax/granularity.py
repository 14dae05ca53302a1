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

import jax
import jax.numpy as jnp

from sparsejax import select

ACCEPTED = "'unstructured', 'n:m' (e.g. '2:4'), 'block:RxC' (e.g. 'block:4x4'), 'channel'"


class Granularity(NamedTuple):
  """kind: unstructured | nm | block | channel; n, m for n:m; block (rows, cols); axis for n:m (None: input axis)."""
  kind: str
  n: int = 0
  m: int = 0
  block: tuple = (1, 1)
  axis: Optional[int] = None

  def check(self, path: str, shape) -> None:
    """Raise a ValueError if this granularity cannot apply to a layer of `shape`."""
    where = f"config.sparsity.granularity={self.spec()!r} on layer {path} of shape {tuple(shape)}"
    if self.axis is not None and self.kind == "nm" and not -len(shape) <= self.axis < len(shape):
      raise ValueError(f"config.sparsity.nm_axis={self.axis} on layer {path} of shape {tuple(shape)}: accepted "
                       f"values are None (the kernel's input axis) or an int in [{-len(shape)}, {len(shape) - 1}]")
    if self.kind == "nm":
      if len(shape) < 1 or shape[self._axis(shape)] % self.m:
        raise ValueError(f"{where}: axis length must be a multiple of m={self.m}")
    elif self.kind == "block":
      if len(shape) < 2:
        raise ValueError(f"{where}: block pruning needs ndim >= 2")
      rows, cols = _as_2d(shape)
      if rows % self.block[0] or cols % self.block[1]:
        raise ValueError(f"{where}: the 2-D view {(rows, cols)} is not divisible into {self.block} blocks")

  def spec(self) -> str:
    return {"unstructured": "unstructured", "channel": "channel", "nm": f"{self.n}:{self.m}",
            "block": f"block:{self.block[0]}x{self.block[1]}"}[self.kind]

  def _axis(self, shape) -> int:
    return (len(shape) - 2 if len(shape) >= 2 else 0) if self.axis is None else self.axis % len(shape)

  def num_groups(self, shape) -> int:
    """Number of groups a layer of `shape` is pooled to (n:m: groups of m)."""
    size = 1
    for d in shape:
      size *= d
    if self.kind == "channel":
      return shape[-1]
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
      return jnp.mean(scores.reshape(-1, scores.shape[-1]), axis=0)
    rows, cols = _as_2d(scores.shape)
    br, bc = self.block
    return jnp.mean(scores.reshape(rows // br, br, cols // bc, bc), axis=(1, 3))

  def expand(self, group_mask, shape):
    """Weight-shaped mask from a group mask."""
    if self.kind == "unstructured":
      return group_mask
    if self.kind == "channel":
      return jnp.broadcast_to(group_mask, shape)
    br, bc = self.block
    full = jnp.repeat(jnp.repeat(group_mask, br, axis=0), bc, axis=1)
    return full.reshape(shape)

  def nm_mask(self, scores, keep, eligible=None):
    """Keep the `keep` largest of every m consecutive entries along the axis (ties: lower index first); only
    `eligible` entries (None: all) are kept, so a group with fewer eligible entries keeps fewer."""
    axis = self._axis(scores.shape)
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


def parse(spec: str, axis: Optional[int] = None) -> Granularity:
  """'unstructured' | 'n:m' | 'block:RxC' | 'channel' -> Granularity; anything else is a ValueError."""
  if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
    raise ValueError(f"config.sparsity.nm_axis: got {axis!r}; accepted values: None (the kernel's input axis) or an "
                     "int axis of the weight")
  if not isinstance(spec, str):
    raise ValueError(f"config.sparsity.granularity: {spec!r} is not one of {ACCEPTED}")
  if spec in ("unstructured", "channel"):
    return Granularity(spec, axis=axis)
  nm = re.fullmatch(r"(\d+):(\d+)", spec)
  if nm:
    n, m = int(nm.group(1)), int(nm.group(2))
    if not 0 < n <= m:
      raise ValueError(f"config.sparsity.granularity: {spec!r} needs 0 < n <= m")
    return Granularity("nm", n=n, m=m, axis=axis)
  blk = re.fullmatch(r"block:(\d+)x(\d+)", spec)
  if blk and int(blk.group(1)) > 0 and int(blk.group(2)) > 0:
    return Granularity("block", block=(int(blk.group(1)), int(blk.group(2))), axis=axis)
  raise ValueError(f"config.sparsity.granularity: {spec!r} is not one of {ACCEPTED}")
