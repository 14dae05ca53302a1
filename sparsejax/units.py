"""Structured units of transformers: attention heads and MLP neurons, pruned whole across the layers that share them.

A unit spans several weights. Head h of an attention module is column block h of its query, key and value kernels
(Flax DenseGeneral (in, heads, head_dim): axis 1) and row block h of its output projection ((heads, head_dim, out):
axis 0); removing it removes the head (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"; Voita et
al. 2019). Neuron j of an MLP is column j of its first kernel (`fc1`, (in, hidden): the last axis) and row j of its
second (`fc2`, (hidden, out): axis 0), the unit of structured FFN pruning (e.g. Ma et al. 2023, "LLM-Pruner"). A
module is the path up to the projection's name ('block_0/attn', 'blocks/attn[3]' for slice 3 of a scanned stack).

Selection runs on one score per unit: the sum of its weights' scores (|w| for magnitude pruning), so a unit is
judged by all of its weights, then the same top-k as every other granularity: `uniform` keeps round((1 - s) * units)
of each module, `global` ranks all units of all modules together, each weighted by its number of weights.

>>> import jax.numpy as jnp
>>> units_of("block_0/attn/query/kernel", "head"), units_of("blocks/mlp/fc2/kernel[2]", "neuron")
(('block_0/attn', 1), ('blocks/mlp[2]', 0))
>>> units_of("block_0/mlp/fc1/kernel", "head") is None
True
"""
from __future__ import annotations

import re
from typing import Optional

import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib

KINDS = ("head", "neuron")
# (regex over a layer path without its slice suffix, unit axis of the weight); group(1) is the module.
_MEMBERS = {
    "head": ((re.compile(r"^(.*?)/?(?:query|key|value)/kernel$"), 1), (re.compile(r"^(.*?)/?out/kernel$"), 0)),
    "neuron": ((re.compile(r"^(.*?)/?fc1/kernel$"), -1), (re.compile(r"^(.*?)/?fc2/kernel$"), 0)),
}
_SLICE = re.compile(r"^(.*?)(\[\d+\])?$")
DEFAULT_PRUNABLE = {"head": (r"(^|/)(query|key|value|out)/kernel$",), "neuron": (r"(^|/)fc[12]/kernel$",)}


def units_of(path: str, kind: str) -> Optional[tuple[str, int]]:
  """(module, unit axis) of the layer at `path` for granularity `kind`, or None when it holds no such unit."""
  base, index = _SLICE.match(path).groups()
  for rx, axis in _MEMBERS[kind]:
    m = rx.match(base)
    if m:
      return m.group(1) + (index or ""), axis
  return None


def groups(kind: str, paths, shapes) -> tuple[list, list]:
  """Modules in first-seen order, and for each layer (module index, unit axis).

  Raises:
    ValueError: a layer holds no unit of `kind`, or the layers of one module disagree on the number of units.
  """
  modules, members, sizes = [], [], {}
  for path, shape in zip(paths, shapes):
    found = units_of(path, kind)
    if found is None:
      raise ValueError(f"config.sparsity.granularity={kind!r}: layer {path} is not part of a {kind} (prunable "
                       f"layers must be {'query/key/value/out' if kind == 'head' else 'fc1/fc2'} kernels; set "
                       f"config.sparsity.prunable, e.g. {list(DEFAULT_PRUNABLE[kind])})")
    module, axis = found
    if len(shape) < 2:
      raise ValueError(f"config.sparsity.granularity={kind!r}: layer {path} of shape {tuple(shape)} has no unit axis")
    n = shape[axis]
    if sizes.setdefault(module, n) != n:
      raise ValueError(f"config.sparsity.granularity={kind!r}: layers of {module} disagree on its number of "
                       f"{kind}s ({sizes[module]} and {n} in {path} of shape {tuple(shape)})")
    if module not in modules:
      modules.append(module)
    members.append((modules.index(module), axis % len(shape)))
  return modules, members


def _reduce_to_units(x, axis: int):
  return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))


def unit_scores(kind: str, paths, shapes, scores: list) -> tuple[list, list]:
  """One score per unit of each module (sum over its weights), and the number of weights in one unit."""
  modules, members = groups(kind, paths, shapes)
  totals, weights = [None] * len(modules), [0] * len(modules)
  for (mod, axis), s, shape in zip(members, scores, shapes):
    part = _reduce_to_units(s.astype(jnp.float32), axis)
    totals[mod] = part if totals[mod] is None else totals[mod] + part
    weights[mod] += int(np.prod(shape)) // shape[axis]
  return totals, weights


def unit_eligible(kind: str, paths, shapes, eligible: list) -> list:
  """A unit is eligible when any of its weights is (a pruned unit stays pruned under a monotone schedule)."""
  modules, members = groups(kind, paths, shapes)
  out = [None] * len(modules)
  for (mod, axis), e in zip(members, eligible):
    part = _reduce_to_units(e.astype(jnp.int32), axis) > 0
    out[mod] = part if out[mod] is None else out[mod] | part
  return out


def expand(kind: str, paths, shapes, unit_masks: list) -> list:
  """Each layer's mask from its module's unit mask."""
  _, members = groups(kind, paths, shapes)
  out = []
  for (mod, axis), shape in zip(members, shapes):
    u = unit_masks[mod]
    view = [1] * len(shape)
    view[axis] = shape[axis]
    out.append(jnp.broadcast_to(u.reshape(view), tuple(shape)))
  return out


def count(masks_by_layer: dict, kind: str) -> dict:
  """Units kept per module, counted from the masks: {module: {"units", "kept"}} and the totals.

  A unit is kept when any weight of it is kept (all or none are, under this granularity).

  Args:
    masks_by_layer: {layer path: bool mask} (`sj.summary`-style layer names; slices of stacked leaves as 'path[i]').
    kind: 'head' or 'neuron'.
  """
  per = {}
  for path, m in masks_by_layer.items():
    found = units_of(path, kind)
    if found is None:
      continue
    module, axis = found
    kept = np.asarray(_reduce_to_units(jnp.asarray(m, jnp.int32), axis % m.ndim) > 0)
    per[module] = kept if module not in per else per[module] | kept
  modules = {k: {"units": int(v.size), "kept": int(v.sum())} for k, v in per.items()}
  total = sum(v["units"] for v in modules.values())
  kept = sum(v["kept"] for v in modules.values())
  return {"kind": kind, "modules": modules, "units": total, "kept": kept, "pruned": total - kept}


def count_tree(masks, kind: str, stacked=None) -> dict:
  """`count` of a mask tree; the slices of stacked leaves (`config.sparsity.stacked`) are layers of their own."""
  layers = {}
  for path, m in masks_lib.flatten_with_paths(masks_lib.pure(masks), is_leaf=masks_lib.is_none):
    if m is None:
      continue
    depth = masks_lib.stack_depth(path, m, stacked)
    layers.update({masks_lib.layer_name(path, i): m[i] for i in range(depth)} if depth else {path: m})
  return count(layers, kind)


def flops_per_token(params, context: int, causal: bool = True, stacked=None) -> dict:
  """Multiply-add FLOPs per token of a transformer, dense and what the masks leave, counted from the arrays.

  Weights: 2 x the nonzero entries of every `kernel` (Dense, DenseGeneral, Conv; pruned entries are exactly 0 in
  `params`) plus a tied output head (2 x the token embedding, when there is `wte/embedding` and no `head/kernel`).
  Attention: 4 x head_dim x the positions attended (QK^T and AV) for each head with any weight kept; positions are
  `context`, or (context + 1) / 2 on average under a causal mask. Embedding lookups, norms and softmax are not counted.

  Returns:
    {"dense": FLOPs of the unpruned model, "remaining": with the masks, "fraction": remaining / dense}.
  """
  flat = dict(masks_lib.flatten_with_paths(masks_lib.pure(params)))
  dense = remaining = 0.0
  for path, x in flat.items():
    if path.endswith("kernel") and np.ndim(x) >= 2:
      dense += 2.0 * x.size
      remaining += 2.0 * float(jnp.count_nonzero(x))
  tied = [x for p, x in flat.items() if p.endswith("wte/embedding")]
  if tied and not any(p.endswith("head/kernel") for p in flat):
    dense += 2.0 * tied[0].size
    remaining += 2.0 * tied[0].size
  positions = (context + 1) / 2 if causal else float(context)
  layers = {}
  for path, x in flat.items():
    found = units_of(path, "head") if path.endswith("query/kernel") else None
    if found is None:
      continue
    depth = masks_lib.stack_depth(path, x, stacked)
    for i, w in enumerate([x[i] for i in range(depth)] if depth else [x]):
      kept = int(jnp.count_nonzero(jnp.any(w != 0, axis=(0, 2))))
      layers[f"{path}[{i}]" if depth else path] = (w.shape[1], kept, w.shape[2])
  for heads, kept, head_dim in layers.values():
    dense += 4.0 * head_dim * positions * heads
    remaining += 4.0 * head_dim * positions * kept
  return {"dense": dense, "remaining": remaining, "fraction": remaining / max(dense, 1.0)}
