"""Lottery tickets as library calls: iterative magnitude pruning (IMP) in your own model and loop.

Frankle & Carbin 2019: train, remove a fraction of the weights that remain by magnitude (`next_masks`), reset the
survivors to their values at a saved step (`rewind`) and train again; after L levels the density is (1 - p)^L. The
controls that show a ticket is a ticket: the same masks with fresh weights (`random_reinit`), and the same per-layer
counts at random places (`random_mask`). Nothing here knows the train loop; the launcher's driver
(`sparsejax.lottery`) is a loop over these calls with checkpoints around it. Masks are installed with
`sj.set_masks`, so every level reuses one compiled step. IMP on your own model, with the `imp` pruner (its masks
change only when you set them):

>>> import jax, optax, flax.linen as nn, sparsejax as sj
>>> model = nn.Sequential([nn.Dense(64), nn.relu, nn.Dense(10)])
>>> x, y = jax.random.normal(jax.random.key(1), (64, 20)), jax.random.randint(jax.random.key(2), (64,), 0, 10)
>>> init = model.init(jax.random.key(0), x)["params"]
>>> tx = sj.sparsify(optax.adam(1e-2), sj.create_pruner({"algorithm": "imp"}))
>>> @jax.jit
... def step(params, opt_state):
...   loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
...   updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
...   return optax.apply_updates(params, updates), opt_state
>>> def train(params, opt_state, steps=20):
...   for _ in range(steps):
...     params, opt_state = step(params, opt_state)
...   return params
>>> masks = sj.create_masks(init)  # level 0 trains dense
>>> for level in range(4):
...   trained = train(*sj.tickets.rewind(init, tx.init(init), masks))  # survivors back to their initial values
...   print(level, round(float(sj.masks.sparsity(masks)), 3))
...   masks = sj.tickets.next_masks(trained, masks, prune_fraction=0.2)  # 20% of what remains, by magnitude
0 0.0
1 0.2
2 0.36
3 0.488
>>> rand = sj.tickets.random_mask(masks, seed=0, level=4)  # control: the same per-layer counts at random places
>>> control = train(*sj.tickets.rewind(init, tx.init(init), rand))
>>> fresh = sj.tickets.random_reinit(lambda key: model.init(key, x)["params"], masks, seed=0, level=4)
>>> reinit = train(*sj.tickets.rewind(fresh, tx.init(fresh), masks))  # control: the ticket's masks, new weights
>>> [round(sj.summary(m, p)["total"]["sparsity"], 3) for m, p in [(rand, control), (masks, reinit)]]  # from the weights
[0.591, 0.591]

Late rewinding (Frankle et al. 2020) keeps `saved = sj.tickets.snapshot((params, opt_state))` at step k of level 0 and
starts every level from `sj.tickets.rewind(*saved, masks)`; learning-rate rewinding (Renda et al. 2020) gives
`rewind` the trained params with the optimizer state saved at step k; fine-tuning, the trained params and state.
"""
from __future__ import annotations

import functools
import numbers
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import masks as masks_lib, select, transform

PyTree = Any
DISTRIBUTIONS = ("uniform", "global")
# Streams of the controls' keys: fold_in(fold_in(PRNGKey(seed), stream), level), so no (seed, level) pair shares a
# key with another (`PRNGKey(seed + 1 + level)` made seed 0 level L+1 equal seed 1 level L).
RANDOM_MASK_STREAM, RANDOM_REINIT_STREAM = 1, 2


def control_key(seed: int, stream: int, level: int) -> jax.Array:
  """The PRNG key of a control at `level`: fold_in(fold_in(PRNGKey(seed), stream), level)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), stream), level)


def layer_fractions(paths, prune_fraction: float, overrides: Optional[Mapping[str, float]] = None) -> list[float]:
  """Prune fraction of each layer: `prune_fraction`, or the value of the first regex of `overrides` (re.search
  over the layer's path) that matches it."""
  overrides = overrides or {}
  out = []
  for path in paths:
    hit = next((v for rx, v in overrides.items() if re.search(rx, path)), prune_fraction)
    out.append(float(hit))
  return out


def _check(prune_fraction, distribution, min_density, overrides):
  for name, value in [("prune_fraction", prune_fraction), *(("overrides", v) for v in (overrides or {}).values())]:
    if not (isinstance(value, numbers.Real) and 0.0 < value < 1.0):
      raise ValueError(f"sparsejax.tickets.next_masks: {name} got {value!r}; accepted values: a number in (0, 1)")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"sparsejax.tickets.next_masks: distribution got {distribution!r}; accepted values: "
                     f"{DISTRIBUTIONS}")
  if not (isinstance(min_density, numbers.Real) and 0.0 <= min_density <= 1.0):
    raise ValueError(f"sparsejax.tickets.next_masks: min_density got {min_density!r}; accepted values: a number in "
                     "[0, 1]")
  if overrides and distribution == "global":
    raise ValueError("sparsejax.tickets.next_masks: overrides are per-layer fractions; accepted with distribution "
                     "'uniform', not 'global'")


def next_masks(params: PyTree, masks: PyTree, prune_fraction: float = 0.2, *, distribution: str = "uniform",
               overrides: Optional[Mapping[str, float]] = None, min_density: float = 0.0) -> PyTree:
  """The masks of the next IMP level: remove a fraction of the weights that remain, by magnitude.

  Per layer ('uniform'): layer l keeps round((1 - p_l) * nnz_l) of its kept weights, p_l = `prune_fraction` or the
  first matching regex of `overrides`. Globally ('global'): round((1 - p) * nnz) over all layers, each layer first
  keeping its ceil(min_density * size) largest weights (layer collapse is what a global threshold risks). Only kept
  weights can stay kept; ties are broken by position, so the result is deterministic. Jitted.

  Args:
    params: the trained weights of the level that ends (any tree: Flax, NNX state, an Equinox filtered model).
    masks: that level's masks (`sj.get_masks(opt_state)`, or `sj.create_masks(params)` for the dense level 0).
    prune_fraction: fraction of the remaining weights removed, in (0, 1).
    distribution: 'uniform' (per layer) or 'global'.
    overrides: optional {regex: fraction} per-layer fractions ('uniform' only), such as {"head": 0.1}.
    min_density: the per-layer floor of 'global'.

  Returns:
    A mask tree like `masks`.
  """
  _check(prune_fraction, distribution, min_density, overrides)
  masks = masks_lib.pure(masks)
  paths = tuple(masks_lib.mask_paths(masks))
  fractions = tuple(layer_fractions(paths, prune_fraction, overrides)) if distribution == "uniform" else None
  return _next_masks(masks_lib.pure(params), masks, paths, fractions, float(prune_fraction), float(min_density))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _next_masks(params, masks, paths, fractions, prune_fraction, min_density):
  flat = dict(masks_lib.flatten_with_paths(params))
  scores = [jnp.abs(flat[p]) for p in paths]
  old = masks_lib.mask_leaves(masks)
  nnz = [jnp.sum(m, dtype=jnp.int32) for m in old]
  if fractions is None:  # global
    keep = jnp.round((1.0 - prune_fraction) * sum(nnz)).astype(jnp.int32)
    floors = [min(int(np.ceil(min_density * m.size)), m.size) for m in old]
    floor_masks = select.topk_masks(scores, floors, old)
    rest = select.global_topk_masks(scores, keep - sum(jnp.sum(f, dtype=jnp.int32) for f in floor_masks),
                                    [o & ~f for o, f in zip(old, floor_masks)])
    new = [a | b for a, b in zip(floor_masks, rest)]
  else:
    ks = [jnp.round((1.0 - p) * n).astype(jnp.int32) for p, n in zip(fractions, nnz)]
    new = select.topk_masks(scores, ks, old)
  by_path = dict(zip(paths, new))
  return jax.tree_util.tree_map_with_path(
      lambda kp, m: None if m is None else by_path[masks_lib.path_str(kp)], masks, is_leaf=masks_lib.is_none)


@jax.jit
def random_masks_like(masks: PyTree, rng: jax.Array) -> PyTree:
  """Masks with the same number of kept entries per layer as `masks`, at uniformly random positions (jitted: the
  selection's counting loops dispatched op by op took seconds per level)."""
  masks = masks_lib.pure(masks)
  paths = masks_lib.mask_paths(masks)
  leaves = masks_lib.mask_leaves(masks)
  keys = jax.random.split(rng, len(leaves))
  new = select.topk_masks([jax.random.uniform(k, m.shape) for k, m in zip(keys, leaves)],
                          [jnp.sum(m, dtype=jnp.int32) for m in leaves])
  by_path = dict(zip(paths, new))
  return jax.tree_util.tree_map_with_path(
      lambda kp, m: None if m is None else by_path[masks_lib.path_str(kp)], masks, is_leaf=masks_lib.is_none)


def random_mask(masks: PyTree, seed: int, level: int) -> PyTree:
  """The random-mask control of `level`: the per-layer counts of `masks` at random places, drawn from
  `control_key(seed, RANDOM_MASK_STREAM, level)`. Train it from the same rewound weights as the ticket."""
  return random_masks_like(masks, control_key(seed, RANDOM_MASK_STREAM, level))


def random_reinit(init_fn: Callable[[jax.Array], PyTree], masks: PyTree, seed: int, level: int) -> PyTree:
  """The random-reinitialisation control of `level`: fresh weights `init_fn(key)` (your model's init, with the key
  `control_key(seed, RANDOM_REINIT_STREAM, level)`) pruned to the ticket's `masks`. Start it with `rewind(weights,
  opt_state, masks)`."""
  return masks_lib.apply_masks(init_fn(control_key(seed, RANDOM_REINIT_STREAM, level)), masks)


def rewind(params: PyTree, opt_state, masks: PyTree) -> tuple[PyTree, Any]:
  """The start of a level: `(params pruned to masks, opt_state with the masks installed)`.

  Which `params` and `opt_state` to give is the rewinding: the initial weights and `tx.init` (LTH), the weights and
  state saved at step k of level 0 (late rewinding), the trained weights with the state saved at step k (learning-rate
  rewinding), or the trained weights and state (fine-tuning). `opt_state` holds a `sparsify` state; `set_masks` makes
  the next update reset the optimizer state of every pruned weight, so a saved state carries no moment of a weight
  pruned since. An NNX `optimizer.opt_state` is set in place; update your model with the returned params
  (`nnx.update(model, params)`).
  """
  return masks_lib.apply_masks(params, masks), transform.set_masks(opt_state, masks)


def snapshot(tree: PyTree) -> PyTree:
  """A copy of `tree` (params, an optimizer state, a TrainState) that outlives a step that donates its buffers:
  on the host with one process; on the devices with several, where no process holds a sharded array whole."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)
