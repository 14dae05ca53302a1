"""`sparsify(tx, pruner)`: pruning as an optax GradientTransformation, one call per step.

The wrapped update (1) checks that the params it is given are 0 wherever the masks prune (see "Composition" in
`sparsify`); (2) at schedule steps recomputes the masks from the current weights and dense gradients inside the same
jitted update (a lax.cond whose other branch leaves the masks in place between updates, with no copy): no
re-trace, no host round trip; (3) at a step that changes masks, sets the inner optimizer's state of every weight not
kept, and one step later of the weights grown then, to what `tx.init` gives (Adagrad's 0.1, not 0), so a pruned
weight carries no stale moment (with zero gradients, it stays there under SGD, momentum, Adam or Adagrad) and a
regrown weight starts its first real update from exactly tx.init's state; (4) masks the gradients to
the weights kept at this step (a weight grown now waits one step at 0), so the state of pruned weights sees only
zero gradients; (5) runs the inner optimizer, passing on any extra arguments (`value`, `grad`, `value_fn`); and (6)
returns updates that take every pruned weight to exactly 0 and never move it: for a pruned weight the update is -w,
and w + (-w) == 0 exactly in floating point. (4) and (6) fuse with the optimizer's own elementwise pass; (3) runs in a
cond, only at the steps it names.

Which leaves of the inner optimizer's state belong to which weight is found by path and shape (`state_slots`), so any
layout works: `optax.chain`, `multi_transform`, `masked`, `MultiSteps`, `inject_hyperparams`, a bare array as params.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import masks as masks_lib, select
from sparsejax.pruners.base import Pruner, PrunerState

PyTree = Any

COMPOSITION = (
    "sparsify keeps pruned weights at exactly 0 only when (1) training starts from masked params "
    "(`params, opt_state = sj.sparse_init(tx, params)`, or `sj.apply_masks(params, sj.get_masks(opt_state))` after "
    "`tx.init` or `sj.set_masks`) and (2) its updates are applied as they are: nothing after it may change them. "
    "Put other transformations inside it (`sj.sparsify(optax.chain(tx, optax.scale(0.5)), pruner)`), not after it "
    "(`optax.chain(sj.sparsify(tx, pruner), optax.scale(0.5))`); `optax.lookahead` cannot be combined with sparsify "
    "(its slow weights revive pruned ones at every sync); for gradient accumulation use "
    "`optax.MultiSteps(sj.sparsify(tx, pruner), k)`.")


class SparseState(NamedTuple):
  """The `sparsify` optimizer state.

  count: updates done so far (the step). pruner: masks and the pruner's arrays. inner: the wrapped optimizer's state.
  fresh: bool tree like the masks: the weights grown at the last mask update, or by `set_masks` (they wait at 0
    for the rest of that step; their inner state is set to tx.init's before their first real update).
  pending: `set_masks` installed masks since the last update (cleared by the update); the pruners whose masks come
    from outside (snip, grasp, synflow, imp) refuse a first update without.
  violations: bool vector, one entry per prunable layer and one more: an update found the layer nonzero at pruned
    weights; the last, a first update without the masks that must come from outside. Kept by `check="record"` for
    `sj.check_pruned` to raise on the host (`check="raise"` raises from inside the step instead).
  """
  count: jax.Array
  pruner: PrunerState
  inner: optax.OptState
  fresh: PyTree
  pending: jax.Array
  violations: jax.Array


class Slot(NamedTuple):
  """A leaf of an optimizer state holding one value per weight of a prunable layer.

  leaf: index among the state's leaves; layer: index among the mask tree's arrays; stacked: the leaf has leading axes
  before the weight's shape (a history, such as L-BFGS's memory).
  """
  leaf: int
  layer: int
  stacked: bool


def _is_sparse_state(x) -> bool:
  return isinstance(x, SparseState)


def state_slots(state: PyTree, masks: PyTree) -> list[Slot]:
  """The per-weight leaves of an optimizer state, found by path and shape.

  A state leaf belongs to a prunable layer when the layer's param path is a suffix of the leaf's path (the longest
  such path wins): Adam's `mu/dense/kernel`, `multi_transform`'s `inner_states/a/inner_state/0/mu/dense/kernel`, or
  any leaf when params are one bare array. It holds one value per weight when its shape is the weight's, or ends with
  it (stacked). Any other leaf at that path is a statistic shared by a row, a column or the whole layer (Adafactor's
  factored second moments, scalars): no entry of it belongs to one weight, so it is left as the optimizer keeps it.
  """
  flat_masks, _ = jax.tree_util.tree_flatten_with_path(masks_lib.pure(masks), is_leaf=masks_lib.is_none)
  layers, i = {}, 0
  for kp, m in flat_masks:
    if m is not None:
      layers[masks_lib.path_keys(kp)] = (i, tuple(np.shape(m)))
      i += 1
  slots = []
  for j, (kp, x) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
    keys = masks_lib.path_keys(kp)
    hit = next((layers[keys[s:]] for s in range(len(keys) + 1) if keys[s:] in layers), None)
    if hit is None:
      continue
    layer, shape = hit
    xs = tuple(np.shape(x))
    if xs == shape:
      slots.append(Slot(j, layer, False))
    elif len(xs) > len(shape) and xs[len(xs) - len(shape):] == shape:
      slots.append(Slot(j, layer, True))
  return slots


def reset_pruned_state(state: PyTree, fresh: PyTree, keep: PyTree) -> PyTree:
  """`state` with the per-weight entries of every weight not in `keep` taken from `fresh` (what `tx.init` gives)."""
  leaves, treedef = jax.tree.flatten(state)
  fresh_leaves = jax.tree.leaves(fresh)
  keep_leaves = masks_lib.mask_leaves(masks_lib.pure(keep))
  for s in state_slots(state, keep):
    x = leaves[s.leaf]
    leaves[s.leaf] = jnp.where(keep_leaves[s.layer], x, fresh_leaves[s.leaf]).astype(jnp.result_type(x))
  return treedef.unflatten(leaves)


def _raise_if_pruned_nonzero(bad, paths, algorithm=""):
  bad = np.asarray(bad)
  if bad[-1]:
    raise ValueError(
        f"sparsejax.sparsify: algorithm {algorithm or '(snip, grasp, synflow or imp)'!r} computes its masks outside "
        "the optimizer, and none were "
        "installed before the first update, so this run would train dense. Install them first: for snip, grasp and "
        "synflow `masks = sj.prune_at_init(pruner, apply_fn, params, batches)` (or loss_fn=...), then "
        "`opt_state = sj.set_masks(opt_state, masks)` and `params = sj.apply_masks(params, masks)`; for imp, "
        "`sj.set_masks` with the level's masks (all True for the dense level 0).")
  bad = bad[:-1]
  if bad.any():
    layers = [p for p, b in zip(paths, bad) if b]
    raise ValueError(f"sparsejax.sparsify: update() was given params that are nonzero at pruned weights in "
                     f"{layers}. {COMPOSITION}")
  return np.zeros((), np.int32)


_CHECK_WHOLE = 1 << 14  # layers up to this size are checked whole at every step
_CHECK_SLICES = 32      # larger ones one slice of 1/32 at a time, in turn


def _pruned_nonzero(p, m, step):
  """Where a pruned weight is nonzero in (a slice of) one layer, flat (bool). A layer of more than _CHECK_WHOLE
  weights is checked one contiguous slice of 1/_CHECK_SLICES per step, in turn, so every weight is checked every
  _CHECK_SLICES steps for 1/32 of the cost (a full pass costs ~7% of an Adam step of an 800k-weight MLP on CPU)."""
  p, m = p.reshape(-1), m.reshape(-1)
  n = p.shape[0]
  if n > _CHECK_WHOLE:
    c = -(-n // _CHECK_SLICES)
    count = select.count_dtype(n)  # positions past 2**31 in uint32 (or int64 under x64)
    start = jnp.minimum((step % _CHECK_SLICES).astype(count) * count(c), count(n - c))
    p, m = lax.dynamic_slice(p, (start,), (c,)), lax.dynamic_slice(m, (start,), (c,))
  return ~m & (p != 0)


def _violations(params, masks, step, uninstalled=None, sharded=False) -> jax.Array:
  """A bool vector: per prunable layer, whether a weight the masks prune is not exactly 0 in `params`; last,
  `uninstalled` (a bool scalar, or None): masks that must come from outside were never installed.

  Every weight is looked at within _CHECK_SLICES steps (small layers and sharded ones at every step). The layers'
  parts are stacked, padded to the longest, and reduced at once: XLA:CPU compiles each kernel on its own (about
  10-20 ms each), and a reduction per layer compiled to a chain of three or four (94 kernels for ResNet-20's 22
  layers, 24 this way). Where padding would pass 4x what is checked (many small layers beside a large one), each
  layer is reduced by itself.
  """
  pairs = []  # (param, mask) of each prunable layer, in the order of the mask tree's arrays
  jax.tree.map(lambda m, p: None if m is None else pairs.append((p, m)), masks, params, is_leaf=masks_lib.is_none)
  last = jnp.reshape(False if uninstalled is None else uninstalled, (1,)).astype(bool)
  if not pairs:
    return last
  if sharded:
    # Sharded layers are checked whole at every step, in their own shape: each device counts its shard and only the
    # result moves. An OR: XLA:CPU splits the reduction and materialises its input (1 byte a weight, where a float32
    # sum materialised 4: 1.34x dense against 1.2x, bench_scale FSDP 8 devices); a lax.cond checking one step in 32
    # made the step 1.6-1.7x dense against 1.08x.
    bad = jnp.stack([jnp.any(~m & (p != 0)) for p, m in pairs])
  else:
    parts = [_pruned_nonzero(p, m, step) for p, m in pairs]
    widest = max(x.shape[0] for x in parts)
    if len(parts) * widest <= 4 * sum(x.shape[0] for x in parts):
      bad = jnp.any(jnp.stack([jnp.pad(x, (0, widest - x.shape[0])) for x in parts]), axis=1)
    else:
      bad = jnp.stack([jnp.any(x) for x in parts])
  return jnp.concatenate([bad, last])


def _raise_in_step(bad, masks, algorithm="") -> jax.Array:
  """An int32 0, computed by a host callback that raises (from inside jit) when a `_violations` entry is true; the
  caller must use it (a pure callback whose result is unused would be removed).

  A pure callback, not `jax.debug.callback` (whose side effect also costs an ordered token), but any host callback
  makes JAX run the step through its Python dispatch path instead of its C++ one: `check="record"` keeps the step
  free of it."""
  paths = tuple(masks_lib.mask_paths(masks))
  raise_fn = lambda b: _raise_if_pruned_nonzero(b, paths, algorithm)  # noqa: E731
  zero = jax.ShapeDtypeStruct((), jnp.int32)
  callback = lambda b: jax.pure_callback(raise_fn, zero, b)  # noqa: E731
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.size > 1:
    # Under a mesh the partitioner would run the callback on one device and broadcast its result: when it raises,
    # the other devices wait for that broadcast forever. In a shard_map every device runs it (and raises) itself.
    callback = jax.shard_map(callback, mesh=mesh, in_specs=jax.P(), out_specs=jax.P(), check_vma=False)
  return lax.cond(jnp.any(bad), callback, lambda b: jnp.zeros((), jnp.int32), bad)


def _shard_like(masks, params):
  """Under an Explicit mesh (sharding in the types), each mask with exactly its param's sharding, so that loop
  carries and cond branches type-check; unchanged otherwise (under GSPMD the jit's shardings place them)."""

  def like(m, p):
    if m is None or not select.typed_sharded(p):
      return m
    want = jax.typeof(p).sharding
    return m if jax.typeof(m).sharding == want else jax.sharding.reshard(m, want)

  return jax.tree.map(like, masks, params, is_leaf=masks_lib.is_none)


CHECKS = ("raise", "record")


def sparsify(tx: optax.GradientTransformation, pruner: Pruner,
             check: str = "raise") -> optax.GradientTransformationExtraArgs:
  """Wraps any optax optimizer so that its updates prune and keep pruned weights at exactly 0.

  Composition. The update of a pruned weight is -w, which takes it to exactly 0 only if the update is applied as it
  is: `sparsify` must be the last transformation of the chain. Transformations inside it (or chained before it:
  clipping, weight decay, `inject_hyperparams`, `multi_transform`, `masked`) are fine. Anything after it that changes
  its updates (`optax.chain(sparsify(...), optax.scale(0.5))`, the slow-weight sync of `optax.lookahead`) cannot keep
  pruned weights at 0: an update finds a pruned weight that is not 0 (each weight is checked at least every 32 steps)
  and raises an error that says so; the same check catches a sparse start from dense params.

  The check. `check="raise"` (default) raises that error from inside the step, at the step where it happens,
  through a host callback. A host callback puts every call of the step on JAX's Python dispatch path instead of
  its C++ one (measured on CPU: sometimes slower, sometimes faster; `python -m experiments.bench_steady`).
  `check="record"` keeps no callback in the step: each update records what it found in the state, and
  `sj.check_pruned(opt_state)` raises the same error on the host; call it after the first step and then every so
  often (the launcher does, at every log step and before every checkpoint).
  `optax.MultiSteps(sparsify(tx, pruner), k)` accumulates k micro-batches per real update and the pruning schedule
  counts real updates; `sparsify(optax.MultiSteps(tx, k), pruner)` also keeps pruned weights at 0 but its schedule
  counts micro-steps.

  Args:
    tx: the inner optimizer (sgd, momentum, adam, adamw, adafactor, lbfgs, any chain); extra arguments of its update
      (`value`, `grad`, `value_fn`) are passed through.
    pruner: from `sparsejax.create_pruner`.
    check: "raise" or "record" (see above).

  Returns:
    A GradientTransformationExtraArgs whose `update(grads, state, params, **extra_args)` needs params.

  >>> import optax, jax.numpy as jnp
  >>> import sparsejax as sj
  >>> tx = sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "target": 0.5}))
  >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])}
  >>> params, state = sparse_init(tx, params)
  >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.0, -3.0], [0.0, 2.0]]
  """
  if check not in CHECKS:
    raise ValueError(f"sparsify: check={check!r}; accepted values: {', '.join(map(repr, CHECKS))}")
  inner_tx = optax.with_extra_args_support(tx)

  def init_fn(params):
    if type(params).__name__ == "LookaheadParams":
      raise ValueError(f"sparsejax.sparsify cannot wrap optax.lookahead. {COMPOSITION}")
    params = masks_lib.pure(params)
    # Weak types stripped: the update returns strongly typed state (L-BFGS's line-search info), and a jitted step
    # given the init's weakly typed scalars would trace a second time.
    inner = jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)) if isinstance(x, jax.Array) else x,
                         inner_tx.init(params))
    pstate = pruner.init(params)
    pstate = pstate._replace(masks=_shard_like(pstate.masks, params))
    fresh = jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m), pstate.masks,
                         is_leaf=masks_lib.is_none)
    layers = len(masks_lib.mask_leaves(pstate.masks))
    return SparseState(jnp.zeros((), jnp.int32), pstate, inner, fresh, jnp.zeros((), bool),
                       jnp.zeros((layers + 1,), bool))

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError("sparsify: update needs params (tx.update(grads, state, params))")
    pstate, step = state.pruner, state.count
    # Masks that come from outside (snip, grasp, synflow, imp) must be installed (set_masks) before the first update.
    uninstalled = (step == 0) & ~state.pending if pruner.installs else None
    sharded = select.per_layer(jax.tree.leaves(params), pruner.config.get("selection", "auto"))
    bad = _violations(params, pstate.masks, step, uninstalled, sharded)
    if check == "raise" and (uninstalled is not None or masks_lib.mask_leaves(pstate.masks)):
      checked = _raise_in_step(bad, pstate.masks, pruner.config.get("algorithm", ""))
    else:
      # An int32 0 computed from the check's result, which XLA cannot fold (a sum of bools is never negative): the
      # mask update below waits on it, and so the check's reads of params and masks come before the update's
      # in-place writes. Without it XLA copied every donated param and mask at every step to keep them for the
      # check (MLP 784-1024-10, Adam: 1.10-1.15x dense against 0.98-1.02x).
      checked = (jnp.sum(bad.astype(jnp.int32)) < 0).astype(jnp.int32)
    violations = state.violations | bad
    if pruner.observe is not None:
      pstate = pruner.observe(params, grads, pstate, step)
    scheduled = pruner.is_update(step)

    def refresh(operands):
      ps, fresh = operands
      new = pruner.update(params, grads, ps, step)
      new = new._replace(masks=_shard_like(new.masks, params))
      if pruner.grows:  # the weights grown now stay exactly 0 for this step (keep = new & old = new & ~grown)
        fresh = jax.tree.map(lambda n, o: None if n is None else n & ~o, new.masks, ps.masks,
                             is_leaf=masks_lib.is_none)
      return new, fresh

    # A cond whose predicate waits on the check (see above): between mask updates its other branch hands masks and
    # pruner arrays through, and XLA updates them in place, with no copy. (A while loop of zero or one iteration
    # did the same only at a cost: XLA hoisted loop-invariant work out of it, run at every step, and copied params.)
    ok = checked == 0  # always true (the callback raises otherwise); the update's writes wait on it
    pstate, fresh = lax.cond(scheduled & ok, refresh, lambda operands: operands, (pstate, state.fresh))
    if pruner.grows:
      # `fresh` holds the weights grown at the last mask update; they wait at 0 for the rest of that step.
      keep = jax.tree.map(lambda m, f: None if m is None else m & ~(f & scheduled) & ok, pstate.masks, fresh,
                          is_leaf=masks_lib.is_none)
    else:  # `& ok` also where no mask update can run (a constant schedule: the cond above is gone)
      fresh, keep = state.fresh, jax.tree.map(lambda m: None if m is None else m & ok, pstate.masks,
                                              is_leaf=masks_lib.is_none)
    # Before the update of a step that changes masks, the inner state of every weight not kept is set to what tx.init
    # gives, and so, one step later, is that of the weights grown then (or by set_masks), which start their first
    # real update now: from exactly tx.init's state, even for optimizers whose state moves under zero gradients
    # (rmsprop's initial_scale, Adafactor, L-BFGS). Between those steps pruned weights get zero gradients, so their
    # state stays at tx.init's for optimizers whose state does not move under them (SGD, momentum, Adam, Adagrad);
    # others let it drift, unseen: the weight stays 0, and its state is set again if it is grown. In a cond (in
    # place, no copy) instead of at every step: a steady step reads neither `fresh` nor tx.init's values
    # (MLP 784-4096-10, Adam: 1.02x dense against 1.05x).
    just_grown = (step > 0) & pruner.is_update(jnp.maximum(step - 1, 0)) | state.pending

    def reset(inner):
      kept_state = jax.tree.map(lambda k, f: None if k is None else k & ~(f & just_grown), keep, state.fresh,
                                is_leaf=masks_lib.is_none)
      return reset_pruned_state(inner, inner_tx.init(params), kept_state)

    inner = lax.cond((scheduled | just_grown) & ok, reset, lambda inner: inner, state.inner)
    updates, inner = inner_tx.update(masks_lib.apply_masks(grads, keep), inner, params, **extra_args)
    updates = jax.tree.map(lambda m, u, p: u if m is None else jnp.where(m, u, -p), keep, updates, params,
                           is_leaf=masks_lib.is_none)
    pending = jnp.zeros((), bool)
    return updates, SparseState(step + 1, pstate, inner, fresh, pending, violations)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sparse_init(tx: optax.GradientTransformation, params: PyTree) -> tuple[PyTree, optax.OptState]:
  """`(params, opt_state)` to start a sparse run from: `tx.init(params)` and params with its masks applied.

  Pruners that start sparse (random, set, rigl, granet with initial='sparse') draw their masks in `tx.init`; the
  first step must see those weights at 0, or its gradients (RigL's first growth) are those of the dense network.
  `tx` is a `sparsify` transformation, or any transformation that holds one.
  """
  opt_state = tx.init(params)
  return masks_lib.apply_masks(params, get_masks(opt_state)), opt_state


_FIELDS = frozenset(SparseState._fields)


def _is_mapping(x) -> bool:
  """dict, FrozenDict, nnx.State: anything with keys() and item access."""
  return hasattr(x, "keys") and callable(x.keys) and hasattr(x, "__getitem__")


def _children(x) -> list:
  if _is_mapping(x):
    return [x[k] for k in x.keys()]
  if isinstance(x, (list, tuple)):
    return list(x)
  children = jax.tree.flatten(x, is_leaf=lambda y: y is not x)[0]
  return [] if len(children) == 1 and children[0] is x else children


def _is_state_like(x) -> bool:
  """A SparseState, or what it becomes as a mapping: restored by orbax without a target, or in `nnx.state(...)`."""
  return _is_sparse_state(x) or (_is_mapping(x) and set(x.keys()) == _FIELDS)


def _find(opt_state):
  found, todo = [], [opt_state]
  while todo:
    x = todo.pop()
    if _is_state_like(x):
      found.append(x)
    elif x is not None:
      todo.extend(_children(x))
  if len(found) != 1:
    raise ValueError(f"expected exactly one sparsify state in the optimizer state, found {len(found)}")
  return found[0]


def _field(state, name):
  return state[name] if _is_mapping(state) else getattr(state, name)


def get_masks(opt_state, like: PyTree = None) -> PyTree:
  """The mask tree (bool arrays, None where not prunable) held by a `sparsify` optimizer state.

  `opt_state` may be the state itself, any tree that holds it (`optax.chain`, `MultiSteps`, a Flax TrainState,
  `nnx.Optimizer.opt_state`), `nnx.state(optimizer)`, or the nested dicts that orbax restores without a target. The
  last two drop the None leaves: the masks then come as nested dicts of the prunable leaves only; pass
  `like=params` to get them back in the shape of params, with None elsewhere (an NNX state restored without a target,
  whose Variables are `{"value": ...}` dicts, included).
  """
  masks = masks_lib.pure(_field(_field(_find(opt_state), "pruner"), "masks"))
  if like is None:
    return masks
  paths = [p for p, _ in masks_lib.flatten_with_paths(masks_lib.pure(like))]
  known = set(paths)
  # Restored without a target, an NNX state holds each Variable as a {"value": array} dict: 'l1/kernel/value'.
  by_path = {p[:-len("/value")] if p.endswith("/value") and p not in known and p[:-len("/value")] in known else p: m
             for p, m in masks_lib.flatten_with_paths(masks)}
  missing = sorted(set(by_path) - set(paths))
  if missing:
    raise ValueError(f"get_masks(like=...): masks at {missing} have no param of that path; param paths are {paths}")
  return masks_lib.map_prunable(lambda p, _: by_path[p], like, list(by_path))


def get_step(opt_state) -> jax.Array:
  return masks_lib.pure(_field(_find(opt_state), "count"))


def check_pruned(opt_state) -> None:
  """Raises the error that `sparsify(..., check="raise")` raises inside the step, if any update of a
  `check="record"` optimizer found a pruned weight nonzero (its updates were changed after sparsify, or training
  started from params that the masks do not fit) or ran without the masks that snip, grasp, synflow and imp need
  installed. Reads one small replicated vector from the device (a host sync); returns None when all is well.

  >>> import optax, jax.numpy as jnp, sparsejax as sj
  >>> tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "target": 0.5}), check="record")
  >>> params, state = sj.sparse_init(tx, {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])})
  >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)  # step 0 prunes half
  >>> sj.check_pruned(state)  # all well: returns None
  >>> _, state = tx.update({"w": jnp.zeros((2, 2))}, state, {"w": jnp.ones((2, 2))})  # pruned weights not 0
  >>> sj.check_pruned(state)
  Traceback (most recent call last):
  ...
  ValueError: sparsejax.sparsify: update() was given params that are nonzero at pruned weights in ['w']. ...
  """
  state = _find(opt_state)
  bad = masks_lib.pure(_field(state, "violations"))
  if isinstance(bad, jax.Array) and not bad.is_fully_addressable:
    bad = bad.addressable_shards[0].data  # replicated: every process holds all of it
  masks = masks_lib.pure(_field(_field(state, "pruner"), "masks"))
  _raise_if_pruned_nonzero(np.asarray(bad), tuple(masks_lib.mask_paths(masks)))


def hyperparams(opt_state) -> dict:
  """The hyperparameters of the optimizer inside `sparsify`: the `hyperparams` dict of its
  `optax.inject_hyperparams` state, the object itself, so that assigning to it (outside jit) changes them, as in optax.

  >>> import optax, sparsejax as sj, jax.numpy as jnp
  >>> tx = sj.sparsify(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), sj.create_pruner({}))
  >>> state = tx.init({"w": jnp.ones((2, 2))})
  >>> sj.hyperparams(state)["learning_rate"] = 0.01
  >>> float(sj.hyperparams(state)["learning_rate"])
  0.01
  """
  inner = _field(_find(opt_state), "inner")
  is_hp = lambda x: isinstance(x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))  # noqa: E731
  found = [x for x in jax.tree.leaves(inner, is_leaf=is_hp) if is_hp(x)]
  if len(found) != 1:
    raise ValueError(f"sj.hyperparams: the optimizer inside sparsify holds {len(found)} optax.inject_hyperparams "
                     "states; it needs exactly one, e.g. sj.sparsify(optax.inject_hyperparams(optax.adam)("
                     "learning_rate=1e-3), pruner)")
  return found[0].hyperparams


def set_masks(opt_state, masks: PyTree):
  """The optimizer state with its masks replaced (same shapes: a jitted step does not re-trace).

  The next update first resets the inner optimizer's state of every weight that `masks` prunes, or grows, to what
  `tx.init` gives, as a mask update inside the step would. Apply the same masks to the params (`sj.apply_masks`)
  before that update.

  `nnx.Optimizer.opt_state` holds NNX Variables, which `nnx.Optimizer.update` writes to in place: their values are
  set in place too (`sj.set_masks(optimizer.opt_state, masks)`), and the same tree is returned.
  """

  def swap(x):
    if _is_sparse_state(x):
      plain = masks_lib.pure(x)
      fresh = jax.tree.map(lambda n, o: None if n is None else n & ~o, masks, plain.pruner.masks,
                           is_leaf=masks_lib.is_none)
      new = plain._replace(pruner=plain.pruner._replace(masks=masks), fresh=fresh, pending=jnp.ones((), bool))
      if any(masks_lib.is_variable(v) for v in jax.tree.leaves(x, is_leaf=masks_lib.is_variable)):
        # A new tree of plain arrays would not fit nnx.Optimizer, which updates its Variables in place.
        jax.tree.map(lambda v, a: v.set_value(a) if masks_lib.is_variable(v) else None, x, new,
                     is_leaf=masks_lib.is_variable)
        return x
      return new
    return x

  return jax.tree.map(swap, opt_state, is_leaf=_is_sparse_state)
