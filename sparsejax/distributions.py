"""How a target sparsity is split across layers: uniform, er, erk, global; per-layer overrides by regex.

Per-layer sparsities are Python floats computed from shapes alone (static under jit). `global` has no per-layer split:
one threshold over all prunable weights, with a per-layer `min_density` floor applied at selection time.

>>> sp = layer_sparsities("erk", {"a": (100, 100), "b": (100, 10)}, 0.9)
>>> round(sp["a"], 4), round(sp["b"], 4)
(0.929, 0.6097)
"""
from __future__ import annotations

import math
import numbers
import re
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import select

DISTRIBUTIONS = ("uniform", "er", "erk", "global")


def _raw_density(distribution: str, shape: Sequence[int]) -> float:
  """Unnormalised density of Erdos-Renyi (Mocanu et al. 2018) or its kernel version ERK (Evci et al. 2020)."""
  if len(shape) < 2:
    return 1.0  # vectors: nothing to scale by; rarely prunable.
  if distribution == "er":
    n_in, n_out = shape[-2], shape[-1]
    return (n_in + n_out) / (n_in * n_out)
  return sum(shape) / math.prod(shape)


def _solve_erk(distribution, shapes: Mapping[str, Sequence[int]], target: float) -> dict[str, float]:
  """ER/ERK densities: one epsilon scales all raw densities so that the kept total is (1 - target) * total.

  A layer whose density would exceed 1 is made dense and epsilon is solved again over the rest, as in RigL's
  sparse_utils (Evci et al. 2020, "Rigging the Lottery"): the layers with the largest raw density go first.
  """
  sizes = {p: math.prod(s) for p, s in shapes.items()}
  raw = {p: _raw_density(distribution, s) for p, s in shapes.items()}
  budget = (1.0 - target) * sum(sizes.values())
  dense: set[str] = set()
  while True:
    free = [p for p in shapes if p not in dense]
    if not free:
      return {p: 0.0 for p in shapes}
    rhs = budget - sum(sizes[p] for p in dense)
    eps = rhs / sum(raw[p] * sizes[p] for p in free)
    top = max(raw[p] for p in free)
    if eps * top <= 1.0:
      break
    dense.update(p for p in free if raw[p] == top)
  return {p: 0.0 if p in dense else 1.0 - eps * raw[p] for p in shapes}


def _match_overrides(paths, overrides: Optional[Mapping[str, float]]) -> dict[str, float]:
  if not overrides:
    return {}
  out = {}
  for rx, value in overrides.items():
    hits = [p for p in paths if re.search(rx, p) and p not in out]
    if not hits:
      raise ValueError(f"config.sparsity.overrides: regex {rx!r} matches no prunable layer; layers are {list(paths)}")
    out.update({p: float(value) for p in hits})
  return out


def layer_sparsities(distribution: str, shapes: Mapping[str, Sequence[int]], target: float,
                     overrides: Optional[Mapping[str, float]] = None) -> Optional[dict[str, float]]:
  """Per-layer sparsity for a target, or None for `global` (selection across layers).

  Args:
    distribution: one of DISTRIBUTIONS.
    shapes: prunable layer path -> shape, in tree order.
    target: overall sparsity in [0, 1).
    overrides: regex -> sparsity; matching layers (first regex wins) get that sparsity and are left out when the
      distribution splits `target` over the other layers.
  """
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"config.sparsity.distribution: {distribution!r} is not one of {DISTRIBUTIONS}")
  fixed = _match_overrides(list(shapes), overrides)
  if distribution == "global":
    if fixed:
      raise ValueError("config.sparsity.overrides: not supported with distribution 'global' (use min_density)")
    return None
  rest = {p: s for p, s in shapes.items() if p not in fixed}
  if distribution == "uniform":
    out = {p: float(target) for p in rest}
  else:
    out = _solve_erk(distribution, rest, target) if rest else {}
  out.update(fixed)
  return {p: out[p] for p in shapes}


def keep_count(sparsity, size) -> jax.Array:
  """Entries kept in a layer of `size` at `sparsity`: round((1 - sparsity) * size), ties to even. A traced
  sparsity may be an (L,) array with `size` a sequence of L sizes: the counts of L layers at once.

  A Python or NumPy number is counted on the host in float64, exactly for any size a mask can have
  (`keep_count(0.9, 10**8)` is 10**7). A traced sparsity (a schedule's value between its ends, float32) is counted in
  float32, within size * 2**-23 + 1 of the exact count; `pruners.base.select_masks` counts the target itself exactly.
  The dtype is `select.count_dtype(size)`: int32 below 2**31, else int64 under `jax_enable_x64`, else uint32 (sizes
  below 2**32; a ValueError past that).
  """
  sizes = np.asarray(size, np.int64)
  dtype = select.count_dtype(int(sizes.max()))
  if isinstance(sparsity, numbers.Real):
    return jnp.asarray(round((1.0 - float(sparsity)) * int(size)), dtype)
  return jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * jnp.asarray(sizes, jnp.float32)).astype(dtype)


def floor_counts(sizes: Sequence[int], min_density: float) -> list[int]:
  """Per-layer minimum number of kept entries for a min_density floor."""
  return [int(math.ceil(min_density * n)) for n in sizes]


def collapsed(nnz: int, size: int, min_density: float = 0.0) -> bool:
  """Whether a layer with `nnz` of `size` weights kept has collapsed: nothing kept, or under its min_density floor."""
  return nnz == 0 or nnz < floor_counts([size], min_density)[0]
