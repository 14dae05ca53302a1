"""Pruning at initialisation: random, SNIP, GraSP and SynFlow masks, fixed for the whole of training.

`prune_at_init(pruner, apply_fn, params, batches)` scores the weights at initialisation (see `sparsejax.scores`) and
keeps the top of the scores with the config's `distribution` (uniform, er, erk: exact per-layer counts; global: one
threshold with the `min_density` floor) and `granularity`, through `base.select_masks`. The pruners registered for these
algorithms never update their masks inside `sparsify`; the train loop (or a user) installs the computed masks:

    masks = sj.prune_at_init(pruner, apply_fn, params, batches)
    tx = sj.sparsify(optax.adam(1e-3), pruner)
    opt_state = sj.set_masks(tx.init(params), masks)
    params = sj.apply_masks(params, masks)

`random` needs neither data nor model: its pruner already starts from the same random masks (drawn from `seed`), so
`sparsify` alone suffices. SNIP, GraSP and SynFlow start all True until `set_masks`. Magnitude pruning at
initialisation is `oneshot` with `begin_step` 0, which `prune_at_init` also accepts.

>>> import jax.numpy as jnp, sparsejax as sj
>>> pruner = sj.create_pruner({"algorithm": "synflow", "target": 0.5, "iterations": 10})
>>> params = {"w1": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "w2": jnp.array([[1.0], [-1.0]])}
>>> masks = prune_at_init(pruner, lambda p, x: x @ p["w1"] @ p["w2"], params, [{"image": jnp.zeros((4, 2))}])
>>> masks["w1"].tolist(), masks["w2"].tolist()
([[False, True], [False, True]], [[False], [True]])
"""
from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import distributions, masks as masks_lib, schedules, scores
from sparsejax.pruners import base, dst, magnitude

PyTree = Any
ALGORITHMS = ("random", "snip", "grasp", "synflow")
# Algorithms prune_at_init computes masks for: the PaI algorithms, plus magnitude ('oneshot') and no pruning ('dense').
AT_INIT = ALGORITHMS + ("oneshot", "dense")


def fixed_pruner(cfg: dict) -> base.Pruner:
  """A pruner whose masks never change inside `sparsify`: all True at init, or random masks for `random`."""

  def init(params):
    if cfg["algorithm"] != "random":
      return magnitude.initial_state(params, cfg)
    plan = base.make_plan(params, cfg)
    key = jax.random.PRNGKey(cfg["seed"])
    return base.PrunerState(base.from_leaves(params, plan, dst.random_masks(plan, key)), key)

  def update(params, grads, state, step):
    del params, grads, step  # masks are fixed at initialisation
    return state

  return base.Pruner(init, schedules.constant(0.0).is_update, update, None, cfg,
                     installs=cfg["algorithm"] != "random")


def _as_xy(batch):
  if isinstance(batch, dict):
    return jnp.asarray(batch["image"]), jnp.asarray(batch["label"]) if "label" in batch else None
  x, y = batch
  return jnp.asarray(x), None if y is None else jnp.asarray(y)


def _take_any(batches: Optional[Iterable], n: int, algorithm: str, what: str = "for loss_fn") -> list:
  """The first n batches, as they come."""
  if batches is None:
    raise ValueError(f"prune_at_init: algorithm {algorithm!r} needs batches {what}")
  taken = list(itertools.islice(iter(batches), n))
  if len(taken) < n:
    raise ValueError(f"config.sparsity.num_batches={n} but prune_at_init was given {len(taken)} batch(es)")
  return taken


def _take(batches: Optional[Iterable], n: int, algorithm: str, labels: bool = True) -> list:
  """The first n batches as (x, y) pairs."""
  taken = [_as_xy(b) for b in _take_any(batches, n, algorithm, "({'image', 'label'} dicts or (x, y))")]
  if labels and any(y is None for _, y in taken):
    raise ValueError(f"prune_at_init: algorithm {algorithm!r} needs labelled batches ({{'image', 'label'}} dicts)")
  return taken


def _first_output(fn: Callable) -> Callable:
  """fn whose output is returned as it is, or by its first element when it is a tuple (list): a loss_fn returning
  (loss, aux), an apply_fn returning Flax's (out, mutated state) or (logits, aux)."""

  def first(*args):
    out = fn(*args)
    return out[0] if isinstance(out, (tuple, list)) else out

  return first


def synflow_masks(plan: base.Plan, apply_fn: Callable, params: PyTree, input_shape, iterations: int) -> list:
  """Iterative SynFlow: `iterations` rounds; after round r of R the kept fraction is d^(r/R), d = 1 - target.

  Each round rescores with the masks of the round before applied (pruned weights are 0 and stay pruned). With a
  per-layer distribution the schedule's overall sparsity is split over the layers in proportion to their final
  sparsities, so the total follows d^(r/R) (up to rounding) and every layer ends at its own count.
  """
  return _synflow_rounds(plan, apply_fn, tuple(input_shape), iterations, params)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _synflow_rounds(plan, apply_fn, input_shape, iterations, params):
  density = 1.0 - plan.target

  def round_(r, kept):
    tree = base.from_leaves(params, plan, kept)
    s = base.leaves_at(scores.synflow(apply_fn, params, tree, input_shape), plan)
    sparsity = 1.0 - jnp.float32(density) ** ((r + 1) / iterations)
    sparsity = jnp.where(r == iterations - 1, jnp.float32(plan.target), sparsity)
    return base.select_masks(plan, s, sparsity, eligible=kept)

  return lax.fori_loop(0, iterations, round_, [jnp.ones(s, bool) for s in plan.shapes])


def prune_at_init(pruner: base.Pruner, apply_fn: Optional[Callable], params: PyTree, batches: Optional[Iterable],
                  rng: Optional[jax.Array] = None, *, loss_fn: Optional[Callable] = None,
                  input_shape: Optional[tuple] = None) -> PyTree:
  """Masks for `params` at initialisation from the pruner's config.

  Args:
    pruner: from `sparsejax.create_pruner`; its algorithm is one of AT_INIT.
    apply_fn: apply_fn(params, x) -> logits in eval mode (BatchNorm statistics closed over); a tuple or list output
      counts by its first element. SNIP and GraSP use it through softmax cross-entropy unless `loss_fn` is given;
      SynFlow always uses it. Unused by random, oneshot and dense (None is fine there, and with `loss_fn` for SNIP
      and GraSP).
    params: the initial params (the inner `variables["params"]` tree).
    batches: an iterable of batches; SNIP and GraSP use the first `num_batches`, SynFlow only the input shape of the
      first; None is fine for random, oneshot and dense. Without `loss_fn`: {"image", "label"} dicts or (x, y) pairs.
      With `loss_fn`: any format, given to it as they come.
    rng: PRNG key of the random scores; None: PRNGKey(config seed), the key of the `random` pruner's own init.
    loss_fn: optional `loss_fn(params, batch) -> scalar loss` (or `(loss, aux)`) that SNIP and GraSP differentiate
      instead of the built-in cross-entropy (GraSP's `temperature` then is yours to apply).
    input_shape: SynFlow's input shape without the batch axis; None: that of the first batch's inputs
      ({"image"} or (x, y)).

  Returns:
    A mask tree like params: bool arrays on the prunable leaves, None elsewhere.
  """
  cfg = pruner.config
  algorithm = cfg["algorithm"]
  if algorithm not in AT_INIT:
    raise ValueError(f"config.sparsity.algorithm: prune_at_init supports {AT_INIT}, got {algorithm!r}")
  plan = base.make_plan(params, cfg)
  prunable = masks_lib.map_prunable(lambda _, x: jnp.ones_like(x, bool), params, base.prunable_leaves(plan))
  if algorithm in ("snip", "grasp", "synflow") and apply_fn is None and (loss_fn is None or algorithm == "synflow"):
    raise ValueError(f"prune_at_init: algorithm {algorithm!r} needs apply_fn(params, x)"
                     + (" (or loss_fn(params, batch))" if algorithm != "synflow" else ""))
  if algorithm == "synflow":
    if input_shape is None:
      x, _ = _take(batches, 1, algorithm, labels=False)[0]
      input_shape = x.shape[1:]
    kept = synflow_masks(plan, _first_output(apply_fn), params, tuple(input_shape), cfg["iterations"])
    return base.from_leaves(params, plan, kept)
  if algorithm == "random":  # with rng None, the masks the `random` pruner's own init draws
    key = jax.random.PRNGKey(cfg["seed"]) if rng is None else rng
    return base.from_leaves(params, plan, dst.random_masks(plan, key))
  if algorithm in ("snip", "grasp"):
    if loss_fn is None:
      temperature = cfg["temperature"] if algorithm == "grasp" else 1.0
      loss = scores.cross_entropy(_first_output(apply_fn), temperature)
      taken = _take(batches, cfg["num_batches"], algorithm)
    else:
      loss, taken = _first_output(loss_fn), _take_any(batches, cfg["num_batches"], algorithm)
    tree = (scores.snip if algorithm == "snip" else scores.grasp)(loss, params, taken, prunable)
  else:  # oneshot (magnitude at init) and dense (target 0: everything kept)
    tree = scores.magnitude(params, prunable)
  target = cfg["target"] if algorithm != "dense" else 0.0
  return base.from_leaves(params, plan, _select(plan, base.leaves_at(tree, plan), target))


@functools.partial(jax.jit, static_argnums=0)
def _select(plan: base.Plan, leaf_scores: list, sparsity) -> list:
  return base.select_masks(plan, leaf_scores, sparsity)


def layer_collapse(masks: PyTree, min_density: float = 0.0) -> list[str]:
  """Paths of the layers that collapsed: nothing kept, or fewer than ceil(min_density * size) weights kept.

  "Is Complexity Required for Neural Network Pruning?" and Tanaka et al. 2020 show that pruning at initialisation
  with a global threshold can empty whole layers, which cuts the network; the train loop reports these.
  """
  paths = masks_lib.mask_paths(masks)
  leaves = masks_lib.mask_leaves(masks)
  counts = jax.device_get([jnp.sum(m, dtype=jnp.int32) for m in leaves])
  return [p for p, c, m in zip(paths, counts, leaves) if distributions.collapsed(int(c), m.size, min_density)]
