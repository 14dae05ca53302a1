"""What every pruner shares: the Pruner factory tuple, its state, and the plan that turns scores into masks.

A pruner is a NamedTuple of pure functions (the optax pattern). Hyperparameters live in the closure; what changes per
step (masks, a PRNG key, score accumulators) lives in `PrunerState`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import distributions, granularity, masks as masks_lib, select, units

PyTree = Any


class PrunerState(NamedTuple):
  """masks: bool tree (None where not prunable); rng: PRNG key data; extra: per-algorithm arrays (or ())."""
  masks: PyTree
  rng: jax.Array
  extra: PyTree = ()


class Pruner(NamedTuple):
  """A pruning algorithm as pure functions.

  init(params) -> PrunerState. is_update(step) -> bool array: whether `update` runs at this step.
  update(params, grads, state, step) -> PrunerState: new masks (called inside the jitted `sparsify` update, only at
    steps where is_update is true, with this step's weights before the optimizer update and the dense gradients).
  observe(params, grads, state, step) -> PrunerState: runs at every step (accumulators), or None.
  config: the validated sparsity config as a dict.
  grows: whether `update` may keep a weight that the old masks pruned (SET, RigL, GraNet). False promises that new
    masks are a subset of the old ones, which lets `sparsify` skip a copy of the masks at every step.
  installs: whether the masks come from outside the optimizer (`sj.set_masks`: SNIP, GraSP, SynFlow, IMP); the first
    update then raises if none were installed, instead of training dense.
  """
  init: Callable
  is_update: Callable
  update: Callable
  observe: Optional[Callable]
  config: dict
  grows: bool = False
  installs: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static facts about the prunable layers of one params tree (Python values, fixed under jit).

  A layer is a prunable leaf, or one slice along axis 0 of a stacked leaf (`config.sparsity.stacked`: nn.scan's
  (L, ...) params): `paths` and `shapes` name the layers ('blocks/mlp/fc1/kernel[3]', the slice's shape), while
  `leaf_paths` and `depths` (L, or 0 for an ordinary leaf) say how they sit in the params tree. Distributions, n:m,
  block, channel and min_density see only layers, so a scanned model gets the masks of its unscanned twin.
  """
  paths: tuple
  shapes: tuple
  sparsities: Optional[tuple]  # final per-layer sparsity, None for distribution 'global'
  target: float
  gran: granularity.Granularity
  min_density: float
  selection: str = "auto"  # select.per_layer's mode
  leaf_paths: tuple = ()   # the prunable leaves (default: paths, none stacked)
  depths: tuple = ()       # layers stacked along axis 0 of each leaf; 0: not stacked

  @property
  def grans(self) -> tuple:
    """The granularity of each layer, its n:m and channel axes resolved from the layout, path and shape."""
    return tuple(self.gran.for_layer(p, s) for p, s in zip(self.paths, self.shapes))

  @property
  def sizes(self):
    return tuple(_prod(s) for s in self.shapes)

  def layer_sparsities(self, sparsity_t) -> jax.Array:
    """(L,) float32: the sparsity of each layer when the overall schedule is at sparsity_t, the final split scaled
    by s_t / target, so the total follows the schedule (with target 0 nothing is pruned)."""
    if self.target <= 0:
      return jnp.zeros((len(self.shapes),), jnp.float32)
    return jnp.asarray(np.asarray(self.sparsities, np.float32)) * (sparsity_t / self.target)


def _prod(shape):
  out = 1
  for d in shape:
    out *= d
  return out


def make_plan(params: PyTree, cfg: dict) -> Plan:
  """Prunable paths, shapes and per-layer sparsities for `params` under config `cfg`; validates shapes."""
  stacked = cfg.get("stacked")
  prunable = cfg["prunable"]
  if prunable is None and cfg["granularity"] in units.KINDS:
    prunable = units.DEFAULT_PRUNABLE[cfg["granularity"]]  # the kernels that make up heads / neurons
  leaf_paths = masks_lib.prunable_paths(params, prunable, stacked)
  if not leaf_paths:
    raise ValueError("config.sparsity.prunable: no param is prunable")
  leaves = dict(masks_lib.flatten_with_paths(params))
  depths = tuple(masks_lib.stack_depth(p, leaves[p], stacked) for p in leaf_paths)
  paths, shapes = [], []
  for p, d in zip(leaf_paths, depths):
    shape = tuple(jnp.shape(leaves[p]))
    paths += [masks_lib.layer_name(p, i) for i in range(d)] if d else [p]
    shapes += [shape[1:]] * d if d else [shape]
  shapes = tuple(shapes)
  gran = granularity.parse(cfg["granularity"], cfg.get("nm_axis"), cfg.get("layout", "flax"), cfg.get("channel_axis"))
  for p, s in zip(paths, shapes):
    gran.for_layer(p, s)  # validates the layer's shape and axes
  sp = distributions.layer_sparsities(cfg["distribution"], dict(zip(paths, shapes)), cfg["target"],
                                      cfg.get("overrides"))
  return Plan(tuple(paths), shapes, None if sp is None else tuple(sp[p] for p in paths), float(cfg["target"]),
              gran, float(cfg["min_density"]), cfg.get("selection", "auto"), tuple(leaf_paths), depths)


def _leaf_layout(plan: Plan) -> tuple:
  return (plan.leaf_paths, plan.depths) if plan.leaf_paths else (plan.paths, (0,) * len(plan.paths))


def leaves_at(tree: PyTree, where) -> list:
  """The arrays of `tree` at the layers of a Plan (the slices of stacked leaves included), or at a list of leaf
  paths."""
  flat = dict(masks_lib.flatten_with_paths(tree, is_leaf=masks_lib.is_none))
  if not isinstance(where, Plan):
    return [flat[p] for p in where]
  out = []
  for p, d in zip(*_leaf_layout(where)):
    out += [flat[p][i] for i in range(d)] if d else [flat[p]]
  return out


def from_leaves(params: PyTree, plan: Plan, arrays) -> PyTree:
  """A tree like `params` holding the per-layer `arrays` (plan order) at the prunable leaves, stacked slices
  stacked back; None elsewhere."""
  arrays, by_path = iter(arrays), {}
  leaf_paths, depths = _leaf_layout(plan)
  for p, d in zip(leaf_paths, depths):
    by_path[p] = jnp.stack([next(arrays) for _ in range(d)]) if d else next(arrays)
  return masks_lib.map_prunable(lambda p, _: by_path[p], params, leaf_paths)


def layer_leaves(plan: Plan) -> list:
  """For each layer (plan order): the params-tree path of its leaf, and whether it is a slice of a stacked leaf."""
  return [(p, d > 0) for p, d in zip(*_leaf_layout(plan)) for _ in range(max(d, 1))]


def prunable_leaves(plan: Plan) -> tuple:
  """The params-tree paths of the prunable leaves (a stacked leaf once)."""
  return _leaf_layout(plan)[0]


def select_masks(plan: Plan, scores: list, sparsity_t, eligible: Optional[list] = None,
                 score_fn: Optional[Callable] = None) -> list:
  """Masks (a list in plan order) keeping the highest scores at overall sparsity `sparsity_t`.

  Per-layer distributions keep round((1 - s_l) * groups) groups of each layer; 'global' keeps round((1 - s) * total)
  weights over all layers, after first giving every layer its min_density floor. Only `eligible` entries are kept
  (None: all), which is how monotone schedules never revive a pruned weight. With `score_fn` (an elementwise
  function such as jnp.abs), `scores` are the raw arrays it scores: unstructured selection then applies it once to
  all layers packed together (one compiled kernel instead of one per layer).
  """
  if plan.gran.kind in units.KINDS:
    return _select_units(plan, scores, sparsity_t, eligible, score_fn)
  grans = plan.grans
  unstructured = plan.gran.kind == "unstructured"
  if score_fn is not None and not unstructured:
    scores, score_fn = [score_fn(s) for s in scores], None
  if plan.gran.kind == "nm":
    keep = jnp.round((1.0 - sparsity_t) * plan.gran.m).astype(jnp.int32)
    elig = [None] * len(scores) if eligible is None else eligible
    return [g.nm_mask(s, keep, e) for g, s, e in zip(grans, scores, elig)]
  pooled = scores if unstructured else [g.pool(s) for g, s in zip(grans, scores)]
  elig = eligible if unstructured or eligible is None else [
      g.pool(e.astype(jnp.float32)) > 0 for g, e in zip(grans, eligible)]
  groups = [g.num_groups(s) for g, s in zip(grans, plan.shapes)]
  if plan.sparsities is not None:
    chosen = select.topk_masks(pooled, _layer_counts(plan, sparsity_t, groups), elig, score_fn, plan.selection)
  else:
    chosen = _global_with_floor(plan, pooled, groups, sparsity_t, elig, score_fn)
  return chosen if unstructured else [g.expand(c, s) for g, c, s in zip(grans, chosen, plan.shapes)]


def _select_units(plan: Plan, scores: list, sparsity_t, eligible, score_fn) -> list:
  """Head or neuron masks (`sparsejax.units`): one score per unit, summed over the layers that share it; `uniform`
  keeps round((1 - s) * units) of each module, `global` ranks the units of all modules, weighted by their size."""
  kind = plan.gran.kind
  if score_fn is not None:
    scores = [score_fn(s) for s in scores]
  totals, weights = units.unit_scores(kind, plan.paths, plan.shapes, scores)
  elig = None if eligible is None else units.unit_eligible(kind, plan.paths, plan.shapes, eligible)
  if plan.sparsities is not None:
    ks = [_count(plan, sparsity_t, plan.target, sparsity_t, t.shape[0]) for t in totals]
    chosen = select.topk_masks(totals, ks, elig, None, plan.selection)
  else:
    size = sum(w * t.shape[0] for w, t in zip(weights, totals))
    k = _count(plan, sparsity_t, plan.target, sparsity_t, size)
    chosen = select.global_topk_masks(totals, k, elig, weights, None, plan.selection)
  return units.expand(kind, plan.paths, plan.shapes, chosen)


def _count(plan: Plan, sparsity_t, final: float, current, size: int) -> jax.Array:
  """keep_count at `current`, except at the schedule's end (sparsity_t == target), where the count of the Python
  float `final` is exact at any size (a float32 sparsity of 0.9 would keep 10000002 of 10**8)."""
  at_target = jnp.asarray(sparsity_t, jnp.float32) == jnp.float32(plan.target)
  if select.needs_two_words(size):
    # 2**32 weights or more without x64: the count in two uint32 words (select.Wide), exact at the target.
    ops = select.TwoWords()
    exact = ops.const(round((1.0 - float(final)) * size))
    now = ops.clip(jnp.round((1.0 - jnp.asarray(current, jnp.float32)) * jnp.float32(size)), size)
    return select.Wide(jnp.where(at_target, exact.hi, now.hi), jnp.where(at_target, exact.lo, now.lo))
  return jnp.where(at_target, distributions.keep_count(final, size), distributions.keep_count(current, size))


def _layer_counts(plan: Plan, sparsity_t, groups):
  """Per layer, `_count` of its final sparsity split at `sparsity_t`, as one (L,) array computed by one fused kernel
  (a list of per-layer scalar counts compiled to a kernel each); a list of `_count`s where a count needs more than
  int32."""
  current = plan.layer_sparsities(sparsity_t)
  if max(groups) > select._INT32_MAX:
    return [_count(plan, sparsity_t, f, current[i], n) for i, (f, n) in enumerate(zip(plan.sparsities, groups))]
  at_target = jnp.asarray(sparsity_t, jnp.float32) == jnp.float32(plan.target)
  exact = jnp.stack([distributions.keep_count(f, n) for f, n in zip(plan.sparsities, groups)])  # constants
  return jnp.where(at_target, exact, distributions.keep_count(current, groups))


def _global_with_floor(plan: Plan, pooled, groups, sparsity_t, elig, score_fn=None):
  sizes = [_prod(s) for s in plan.shapes]
  weights = [n // k for n, k in zip(sizes, groups)]
  k = _count(plan, sparsity_t, plan.target, sparsity_t, sum(sizes))
  if plan.min_density <= 0:
    return select.global_topk_masks(pooled, k, elig, weights, score_fn, plan.selection)
  floors = [-(-f // w) for f, w in zip(distributions.floor_counts(sizes, plan.min_density), weights)]
  floor_masks = select.topk_masks(pooled, floors, elig, score_fn, plan.selection)
  rest_elig = [~f if e is None else e & ~f for f, e in zip(floor_masks, elig or [None] * len(pooled))]
  if select.needs_two_words(sum(sizes)):
    # 2**32 weights or more without x64: one array's weighted count fits a uint32 (it has fewer than 2**32 entries),
    # the sum and k - used are counted in two words.
    ops = select.TwoWords()
    used = ops.of(jnp.uint32(0))
    for w, f in zip(weights, floor_masks):
      used = ops.add(used, ops.of(jnp.uint32(w) * jnp.sum(f, dtype=jnp.uint32)))
    k = ops.of(k)
    rest_k = ops.sub(k, ops.min(k, used))
  else:
    dtype = select.count_dtype(sum(sizes))  # exact past 2**31 (uint32 / int64), never below 0
    used = sum(jnp.asarray(w, dtype) * jnp.sum(f, dtype=dtype) for w, f in zip(weights, floor_masks))
    k = jnp.asarray(k).astype(dtype)
    rest_k = jnp.maximum(k, used) - used
  rest = select.global_topk_masks(pooled, rest_k, rest_elig, weights, score_fn, plan.selection)
  return [a | b for a, b in zip(floor_masks, rest)]
