"""Magnitude pruners: dense (no pruning), oneshot, and gradual magnitude pruning (GMP).

GMP follows Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model compression":
every `update_every` steps between `begin_step` and `end_step` the smallest-magnitude weights are removed until the
cubic schedule's sparsity is reached. Pruning is monotone: a pruned weight is never revived.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsejax import masks as masks_lib, schedules
from sparsejax.pruners import base


def initial_state(params, cfg: dict, masks=None) -> base.PrunerState:
  """All-True masks on the prunable leaves (validated against the plan) and the pruner's PRNG key."""
  plan = base.make_plan(params, cfg)
  if masks is None:
    masks = masks_lib.map_prunable(lambda _, x: jnp.ones_like(x, bool), params, base.prunable_leaves(plan))
  return base.PrunerState(masks, jax.random.PRNGKey(cfg["seed"]))


def scheduled_pruner(cfg: dict, schedule: schedules.SparsitySchedule, score_fn, elementwise=None) -> base.Pruner:
  """A monotone pruner: at schedule steps keep the top `score_fn(params, grads, state)` among the kept weights.

  With `elementwise` (jnp.abs), the score is elementwise(score_fn(...)), applied to all layers at once.
  """

  def update(params, grads, state, step):
    plan = base.make_plan(params, cfg)
    scores = base.leaves_at(score_fn(params, grads, state), plan)
    old = base.leaves_at(state.masks, plan)
    new = base.select_masks(plan, scores, schedule.sparsity(step), eligible=old, score_fn=elementwise)
    return state._replace(masks=base.from_leaves(params, plan, new))

  return base.Pruner(lambda params: initial_state(params, cfg), schedule.is_update, update, None, cfg)


def _weights(params, grads, state):
  del grads, state  # |w|, with the absolute value taken on the packed layers (elementwise=jnp.abs)
  return params


def dense(cfg: dict) -> base.Pruner:
  """No pruning: masks stay all True (a dense baseline through the same code path)."""
  return scheduled_pruner(cfg, schedules.constant(0.0), _weights, jnp.abs)


def fixed(cfg: dict) -> base.Pruner:
  """Masks that only change when a driver sets them (`sj.set_masks`): IMP levels, masks found at initialisation."""
  return scheduled_pruner(cfg, schedules.constant(0.0), _weights, jnp.abs)._replace(installs=True)


def oneshot(cfg: dict) -> base.Pruner:
  """One-shot magnitude pruning to `target` at `begin_step`."""
  return scheduled_pruner(cfg, schedules.oneshot(cfg["target"], cfg["begin_step"]), _weights, jnp.abs)


def gmp(cfg: dict) -> base.Pruner:
  """Gradual magnitude pruning (Zhu & Gupta 2017) with the polynomial schedule of `sparsejax.schedules.polynomial`."""
  sched = schedules.polynomial(cfg["initial_sparsity"], cfg["target"], cfg["begin_step"], cfg["end_step"],
                               cfg["update_every"], cfg["power"])
  return scheduled_pruner(cfg, sched, _weights, jnp.abs)
