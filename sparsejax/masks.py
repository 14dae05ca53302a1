"""Mask pytrees: a tree shaped like params, bool arrays where prunable and None elsewhere.

Pure functions create, apply and count masks. Which leaves are prunable is decided once, from regexes over the
flattened param paths ("Dense_0/kernel"), first match wins, as in big_vision's `make_mask_trees`.

>>> import jax.numpy as jnp
>>> params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
>>> masks = create_masks(params)
>>> masks["dense"]["bias"] is None, masks["dense"]["kernel"].shape
(True, (3, 2))
"""
from __future__ import annotations

import re
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def is_none(x) -> bool:
  return x is None


def is_variable(x) -> bool:
  # Flax NNX Variables (nnx.Param, the optimizer's OptState) wrap one array; imported only if the user imported nnx.
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Variable)


def pure(tree: PyTree) -> PyTree:
  """`tree` with every Flax NNX Variable replaced by the array it holds (as `nnx.as_pure`); other trees unchanged.

  `nnx.Optimizer` gives `tx.init` a state of Variables and `tx.update` the same state as plain arrays: sparsejax works
  on the plain form, so masks, summaries and paths are the same whichever form a user passes.
  """
  if "flax.nnx" not in sys.modules:
    return tree
  return jax.tree.map(lambda x: x.get_value() if is_variable(x) else x, tree, is_leaf=is_variable)


def path_keys(keypath) -> tuple[str, ...]:
  """('Dense_0', 'kernel') from a jax key path; the `value` attribute of an NNX Variable is not part of the name."""
  parts = []
  for k in keypath:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        parts.append(k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return tuple(parts)


def path_str(keypath) -> str:
  """'Dense_0/kernel' from a jax key path (NNX: 'l1/kernel', without the Variable's '/value')."""
  return "/".join(path_keys(keypath))


def is_float(x) -> bool:
  """Whether a leaf holds floating-point numbers (only those are ever pruned: int and bool leaves never are)."""
  dtype = getattr(x, "dtype", None)
  return jnp.issubdtype(jnp.result_type(x) if dtype is None else dtype, jnp.floating)


def flatten_with_paths(tree, is_leaf=None) -> list[tuple[str, Any]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(path_str(p), x) for p, x in leaves]


def _parse_rules(prunable) -> list[tuple[re.Pattern, bool]]:
  if isinstance(prunable, str):
    prunable = [prunable]
  rules = []
  for rule in prunable:
    include = not rule.startswith("!")
    try:
      rules.append((re.compile(rule if include else rule[1:]), include))
    except re.error as e:
      raise ValueError(f"config.sparsity.prunable: bad regex {rule!r}: {e}") from None
  return rules


def is_default_prunable(path: str, x, stacked: bool = False) -> bool:
  """The default rule: a weight matrix or kernel (ndim >= 2) that is neither a bias nor an embedding. For a `stacked`
  leaf (axis 0 indexes layers, as `nn.scan` stacks them) the rule applies to one layer's slice.

  >>> is_default_prunable("Dense_0/kernel", np.zeros((3, 4))), is_default_prunable("wte/embedding", np.zeros((9, 4)))
  (True, False)
  >>> is_default_prunable("attention/query/bias", np.zeros((4, 16)))
  False
  >>> is_default_prunable("blocks/ln_1/scale", np.zeros((6, 64)), stacked=True)  # six LayerNorm scales
  False
  """
  parts = path.lower().split("/")
  return np.ndim(x) - int(stacked) >= 2 and parts[-1] != "bias" and not any("embed" in part for part in parts)


def stacked_regexes(stacked: Optional[Sequence[str]]) -> list:
  """Compiled `config.sparsity.stacked` regexes (None or a string: as in `prunable`)."""
  if stacked is None:
    return []
  if isinstance(stacked, str):
    stacked = [stacked]
  try:
    return [re.compile(s) for s in stacked]
  except re.error as e:
    raise ValueError(f"config.sparsity.stacked: bad regex: {e}") from None


def stack_depth(path: str, x, stacked: Optional[Sequence[str]]) -> int:
  """How many layers the leaf at `path` stacks along axis 0: its leading size when a `stacked` regex matches the path
  (nn.scan's (L, ...) params), else 0 (one ordinary layer)."""
  if not any(rx.search(path) for rx in stacked_regexes(stacked)):
    return 0
  if np.ndim(x) < 2:
    raise ValueError(f"config.sparsity.stacked: {path} of shape {tuple(np.shape(x))} matches, but a stacked leaf needs "
                     "a leading layer axis and at least one more axis")
  return int(np.shape(x)[0])


def layer_name(path: str, index: int) -> str:
  """The name of layer `index` of a stacked leaf: 'blocks/mlp/fc1/kernel[3]'."""
  return f"{path}[{index}]"


def prunable_paths(params: PyTree, prunable: Optional[Sequence[str]] = None,
                   stacked: Optional[Sequence[str]] = None) -> list[str]:
  """Paths of the prunable leaves of `params`.

  Args:
    params: a params tree (dict, FrozenDict, any nesting).
    prunable: regexes matched (re.search) against each leaf's path; the first matching rule wins; a rule starting with
      '!' excludes. A leaf matched by no rule is not prunable. None (the default) selects every floating-point leaf
      with ndim >= 2 except biases (a leaf named `bias`, such as the (heads, head_dim) biases of attention) and
      embeddings (a path with a part containing `embed`: token and position tables, ViT's patch embedding); see
      `is_default_prunable`. Integer and bool leaves are never prunable, whatever the rules say.
    stacked: regexes of leaves whose axis 0 stacks layers; the default rule looks at one layer's slice of them.

  Raises:
    ValueError: a rule matches no floating-point param path.
  """
  flat = [(p, x) for p, x in flatten_with_paths(pure(params)) if is_float(x)]
  if prunable is None:
    rxs = stacked_regexes(stacked)
    return [p for p, x in flat if is_default_prunable(p, x, any(r.search(p) for r in rxs))]
  rules = _parse_rules(prunable)
  used = [False] * len(rules)
  chosen = []
  for path, _ in flat:
    for i, (rx, include) in enumerate(rules):
      if rx.search(path):
        used[i] = True
        if include:
          chosen.append(path)
        break
  unused = [r.pattern for (r, _), u in zip(rules, used) if not u]
  if unused:
    raise ValueError(f"config.sparsity.prunable: regex {unused} matches no floating-point param; param paths are "
                     f"{[p for p, _ in flat]}")
  return chosen


def map_prunable(fn, params: PyTree, paths: Sequence[str]) -> PyTree:
  """Tree like params: fn(path, leaf) at the given paths, None elsewhere."""
  wanted = set(paths)
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: fn(path_str(kp), x) if path_str(kp) in wanted else None, pure(params))


def create_masks(params: PyTree, prunable: Optional[Sequence[str]] = None) -> PyTree:
  """All-True bool masks on the prunable leaves, None elsewhere."""
  return map_prunable(lambda _, x: jnp.ones_like(x, bool), params, prunable_paths(params, prunable))


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """params with the pruned entries set to exactly 0 (leaves without a mask unchanged)."""
  return jax.tree.map(lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)), pure(masks), pure(params),
                      is_leaf=is_none)


def mask_paths(masks: PyTree) -> list[str]:
  return [p for p, m in flatten_with_paths(masks, is_leaf=is_none) if m is not None]


def mask_leaves(masks: PyTree) -> list[jax.Array]:
  return [m for m in jax.tree.leaves(masks, is_leaf=is_none) if m is not None]


def nnz(masks: PyTree) -> jax.Array:
  """Number of kept (True) entries over all masks."""
  return sum((jnp.sum(m, dtype=jnp.int32) for m in mask_leaves(masks)), jnp.int32(0))


def sparsity(masks: PyTree) -> jax.Array:
  """Fraction of prunable entries that are pruned."""
  size = sum(int(np.prod(m.shape)) for m in mask_leaves(masks))
  return 1.0 - nnz(masks) / max(size, 1)


class Summary(dict):
  """Per-layer and total sparsity; a dict that prints as a table."""

  def __str__(self) -> str:
    rows = [(p, "x".join(map(str, d["shape"])), d["size"], d["nnz"], d["sparsity"])
            for p, d in self["layers"].items()]
    t = self["total"]
    rows.append(("total", "", t["prunable_params"], t["nnz"], t["sparsity"]))
    w = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{w}}  {'shape':>14}  {'size':>10}  {'nnz':>10}  {'sparsity':>8}"]
    lines += [f"{p:<{w}}  {s:>14}  {n:>10}  {z:>10}  {sp:8.4f}" for p, s, n, z, sp in rows]
    return "\n".join(lines)


def summary(masks: PyTree, params: Optional[PyTree] = None, stacked: Optional[Sequence[str]] = None) -> Summary:
  """Per-layer and total sparsity, counted from the arrays.

  Args:
    masks: a mask tree (bool arrays, None where not prunable).
    params: optional; when given, nnz counts the nonzero entries of the params on the prunable leaves (what is really
      in the weights) instead of the True entries of the masks.
    stacked: regexes of leaves whose axis 0 stacks layers (`config.sparsity.stacked`, nn.scan); each of their slices
      is reported as its own layer, `layer_name(path, i)`.

  Returns:
    Summary: {"layers": {path: {"shape", "size", "nnz", "sparsity"}}, "total": {"prunable_params", "nnz", "sparsity"}}.
  """
  masks = pure(masks)
  if params is None:
    arrays = [(p, m) for p, m in flatten_with_paths(masks, is_leaf=is_none) if m is not None]
  else:
    pairs = jax.tree.map(lambda m, p: None if m is None else p, masks, pure(params), is_leaf=is_none)
    arrays = [(p, x) for p, x in flatten_with_paths(pairs, is_leaf=is_none) if x is not None]
  depths = [stack_depth(p, x, stacked) for p, x in arrays]
  counts = jax.device_get([jnp.count_nonzero(x, axis=tuple(range(1, x.ndim))) if d else jnp.count_nonzero(x)
                           for (_, x), d in zip(arrays, depths)])
  layers, total_nnz, total_size = {}, 0, 0
  for (path, x), c, d in zip(arrays, counts, depths):
    named = [(layer_name(path, i), x.shape[1:], c[i]) for i in range(d)] if d else [(path, x.shape, c)]
    for name, shape, n in named:
      size = int(np.prod(shape))
      layers[name] = {"shape": list(shape), "size": size, "nnz": int(n), "sparsity": 1.0 - int(n) / max(size, 1)}
      total_nnz += int(n)
      total_size += size
  total = {"prunable_params": total_size, "nnz": total_nnz, "sparsity": 1.0 - total_nnz / max(total_size, 1)}
  return Summary(layers=layers, total=total)
