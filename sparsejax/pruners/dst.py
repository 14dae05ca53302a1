"""Dynamic sparse training: SET, RigL and GraNet prune and regrow connections during training.

SET (Mocanu et al. 2018, "Scalable training of artificial neural networks with adaptive sparse connectivity inspired by
network science") and RigL (Evci et al. 2020, "Rigging the Lottery: Making All Tickets Winners") train at a fixed
sparsity from a random mask: every `update_every` steps from `begin_step` until (not including) `end_step`, each layer
drops the fraction f(t) of its kept weights with the smallest magnitude and grows as many among the others: at random
(SET) or by the largest |dense gradient| (RigL). f is `schedules.drop_fraction(drop_schedule, drop_fraction, end_step)`,
RigL's cosine by default. Per-layer counts never change. The weights that just lost the drop may be grown back, as in
RigL's code; such a weight keeps its value, and a weight that was pruned is grown at exactly 0 with zero optimizer
moments (`sparsify` zeroes pruned weights and their moments at every update).

GraNet (Liu et al. 2021, "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration") adds the same
drop-and-grow by gradient ("zero-cost neuroregeneration") to gradual magnitude pruning; see `granet`.

>>> import sparsejax as sj
>>> p = sj.create_pruner({"algorithm": "rigl", "target": 0.9, "end_step": 1000})
>>> [bool(p.is_update(t)) for t in (0, 100, 150, 1000)], p.config["distribution"]
([True, True, False, False], 'uniform')
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from sparsejax import schedules, scores, select
from sparsejax.pruners import base


def on_grid(t, begin: int, end: int, every: int):
  """Whether step t is an update step: begin <= t < end and (t - begin) % every == 0."""
  t = jnp.asarray(t)
  return (t >= begin) & (t < end) & ((t - begin) % every == 0)


def init_plan(params, cfg: dict, sparsity: float) -> base.Plan:
  """The plan of the random starting mask: `init_distribution`'s per-layer split of `sparsity` (for SET and RigL
  the config's validation makes it equal to `distribution`, the split of the whole run)."""
  return base.make_plan(params, {**cfg, "distribution": cfg["init_distribution"], "target": float(sparsity)})


@functools.partial(jax.jit, static_argnums=0)
def random_masks(plan: base.Plan, key) -> list:
  """Random masks with exactly the plan's per-layer counts at its target (top-k of uniform noise per layer); the
  noise is `scores.random`'s, so `prune_at_init` of the `random` algorithm draws the same masks from the same key."""
  return base.select_masks(plan, scores.uniform_noise(key, plan.shapes), plan.target)


def _groups(gran, mask):
  return mask if gran.kind == "unstructured" else gran.pool(mask.astype(jnp.float32)) > 0


def drop_and_grow(grans, masks: list, drop_scores: list, grow_scores: list, fraction, drop_fn=None,
                  grow_fn=None, mode: str = "auto") -> list:
  """One prune-and-regrow step at constant per-layer counts (in groups of each layer's granularity, `plan.grans`).

  Per layer, with nnz kept groups and n_drop = round(fraction * nnz): keep the nnz - n_drop kept groups with the
  highest drop score, then grow the n_drop groups with the highest grow score among all groups not in that kept set.
  drop_fn / grow_fn: optional elementwise functions of the raw drop / grow arrays (jnp.abs), applied to all layers
  at once when unstructured. The kept counts come from the selection's packed arrays (no reduction per layer).
  mode: `select.per_layer`'s.
  """
  unstructured = all(g.kind == "unstructured" for g in grans)
  if not unstructured:
    drop_scores = drop_scores if drop_fn is None else [drop_fn(s) for s in drop_scores]
    grow_scores = grow_scores if grow_fn is None else [grow_fn(s) for s in grow_scores]
    drop_fn = grow_fn = None
    drop_scores = [g.pool(s) for g, s in zip(grans, drop_scores)]
    grow_scores = [g.pool(s) for g, s in zip(grans, grow_scores)]
  kept = [_groups(g, m) for g, m in zip(grans, masks)]
  n_drop = lambda nnz: jnp.round(fraction * nnz).astype(jnp.int32)  # noqa: E731
  survive, nnz = select.topk_masks_and_counts(drop_scores, lambda nnz: nnz - n_drop(nnz), kept, drop_fn, mode)
  grown = select.topk_masks(grow_scores, n_drop(nnz), [~s for s in survive], grow_fn, mode)
  chosen = [s | r for s, r in zip(survive, grown)]
  return chosen if unstructured else [g.expand(c, m.shape) for g, c, m in zip(grans, chosen, masks)]


def _rigl_growth(params, grads, plan, rng, step):
  del params, rng, step  # growth by the dense gradient alone: |g|, taken on the packed layers
  return base.leaves_at(grads, plan), jnp.abs


def _set_growth(params, grads, plan, rng, step):
  """Random growth scores from fold_in(key, step): a function of the seed and the step alone, so every process of a
  multi-host run, a resumed run and a replayed step draw the same positions without exchanging them."""
  del params, grads  # SET grows at random
  return scores.uniform_noise(jax.random.fold_in(rng, step), plan.shapes), None


def _first_state(params, cfg: dict, sparsity: float, dense: bool = False) -> base.PrunerState:
  """Masks at the start (random with init_distribution's counts at `sparsity`, or all True) and the PRNG key."""
  init_key, key = jax.random.split(jax.random.PRNGKey(cfg["seed"]))
  plan = init_plan(params, cfg, sparsity)
  first = [jnp.ones_like(p, bool) for p in base.leaves_at(params, plan)] if dense else random_masks(plan, init_key)
  return base.PrunerState(base.from_leaves(params, plan, first), key)


def _regrowth_pruner(cfg: dict, growth) -> base.Pruner:
  begin, end, every = cfg["begin_step"], cfg["end_step"], cfg["update_every"]
  drop = schedules.drop_fraction(cfg["drop_schedule"], cfg["drop_fraction"], end)

  def update(params, grads, state, step):
    plan = init_plan(params, cfg, cfg["target"])
    grow, grow_fn = growth(params, grads, plan, state.rng, step)
    new = drop_and_grow(plan.grans, base.leaves_at(state.masks, plan), base.leaves_at(params, plan),
                        grow, drop(step), jnp.abs, grow_fn, plan.selection)
    return state._replace(masks=base.from_leaves(params, plan, new))

  return base.Pruner(lambda params: _first_state(params, cfg, cfg["target"]),
                     lambda t: on_grid(t, begin, end, every), update, None, cfg, grows=True)


def set_(cfg: dict) -> base.Pruner:
  """SET (Mocanu et al. 2018): drop the smallest-magnitude kept weights, grow as many at random (key fold_in(PRNGKey(seed), step))."""
  return _regrowth_pruner(cfg, _set_growth)


def rigl(cfg: dict) -> base.Pruner:
  """RigL (Evci et al. 2020): drop the smallest-magnitude kept weights, grow as many with the largest |gradient|."""
  return _regrowth_pruner(cfg, _rigl_growth)


def granet(cfg: dict) -> base.Pruner:
  """GraNet (Liu et al. 2021): gradual magnitude pruning with zero-cost neuroregeneration.

  At every update step (`update_every`, from `begin_step`):
  1. Gradual pruning, up to and at `end_step`: magnitude pruning to the cubic schedule of Zhu & Gupta,
     s_t = target + (initial_sparsity - target) * (1 - (t - begin_step) / (end_step - begin_step))^power, split over the
     layers by `distribution` ('global' is the paper's GraNet; per-layer splits are its GraNet_uniform). Monotone.
  2. Neuroregeneration, at update steps before `regrow_end_step` (None: `end_step`): each layer drops the fraction f(t)
     of its remaining weights by magnitude and regrows as many by |dense gradient| among all its other weights,
     with f the `drop_schedule` (cosine) of `drop_fraction` (the paper uses 0.5) and T_end = regrow_end_step.
     The authors' code keeps regenerating until the end of training with the cosine over the whole run: set
     `regrow_end_step` to the number of training steps to match it.

  `initial` chooses the variant. 'dense' (dense-to-sparse, the paper's s_i = 0): masks start all True and the
  schedule starts at `initial_sparsity` (0 by default). 'sparse' (sparse-to-sparse, the paper's s_i = 0.5 runs): masks
  start random with the per-layer counts of `init_distribution` (ERK by default, as the authors' `--sparse-init ERK`)
  at `initial_sparsity`, drawn from `seed`, and the cubic schedule runs from `initial_sparsity` to `target`.
  One difference from the authors' code: a weight removed by step 1 and regrown by step 2 of the same update keeps its
  value here, where their code has already zeroed it.
  """
  begin, end, every = cfg["begin_step"], cfg["end_step"], cfg["update_every"]
  regrow_end = end if cfg["regrow_end_step"] is None else cfg["regrow_end_step"]
  sched = schedules.polynomial(cfg["initial_sparsity"], cfg["target"], begin, end, every, cfg["power"])
  drop = schedules.drop_fraction(cfg["drop_schedule"], cfg["drop_fraction"], regrow_end)
  sparse_start = cfg["initial"] == "sparse"

  def init(params):
    base.make_plan(params, cfg)  # shape and pattern errors surface at init
    return _first_state(params, cfg, cfg["initial_sparsity"] if sparse_start else 0.0, dense=not sparse_start)

  def update(params, grads, state, step):
    plan = base.make_plan(params, cfg)
    old = base.leaves_at(state.masks, plan)
    weights = base.leaves_at(params, plan)
    pruned = lax.cond(sched.is_update(step),
                      lambda: base.select_masks(plan, weights, sched.sparsity(step), eligible=old, score_fn=jnp.abs),
                      lambda: old)
    grow = base.leaves_at(grads, plan)
    new = lax.cond(on_grid(step, begin, regrow_end, every),
                   lambda: drop_and_grow(plan.grans, pruned, weights, grow, drop(step), jnp.abs, jnp.abs,
                                         plan.selection),
                   lambda: pruned)
    return state._replace(masks=base.from_leaves(params, plan, new))

  return base.Pruner(init, lambda t: sched.is_update(t) | on_grid(t, begin, regrow_end, every), update, None, cfg,
                     grows=True)
