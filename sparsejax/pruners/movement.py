"""Movement pruning (Sanh et al. 2020, "Movement Pruning: Adaptive Sparsity by Fine-Tuning").

Hard movement pruning keeps the weights with the highest importance S = -sum_t w_t * dL/dw_t: a weight gains
importance while it moves away from zero, whatever its size. S is accumulated at every step by the Pruner's `observe`
hook into `PrunerState.extra` (a float32 tree shaped like the prunable params, None elsewhere); the masks keep the
top-k of S with the cubic schedule of Zhu & Gupta between `begin_step` and `end_step` (as the paper does), split over
the layers by `distribution`. Pruning is monotone: a pruned weight is 0, adds nothing to S, and is never revived.

`sparsify` calls `observe` with the step's weights before its optimizer update and the dense gradients at those
weights, so the term accumulated at step t is exactly -w_t * g_t.

>>> import jax.numpy as jnp, sparsejax as sj
>>> p = sj.create_pruner({"algorithm": "movement", "target": 0.5, "end_step": 10, "update_every": 5})
>>> state = p.init({"w": jnp.array([[1.0, 2.0]])})
>>> state = p.observe({"w": jnp.array([[1.0, 2.0]])}, {"w": jnp.array([[-1.0, 1.0]])}, state, 0)
>>> state.extra["w"].tolist()
[[1.0, -2.0]]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sparsejax import masks as masks_lib, schedules, scores
from sparsejax.pruners import base, magnitude


def movement(cfg: dict) -> base.Pruner:
  """Hard movement pruning: top-k of the accumulated -w * g at the cubic schedule's sparsity."""
  sched = schedules.polynomial(cfg["initial_sparsity"], cfg["target"], cfg["begin_step"], cfg["end_step"],
                               cfg["update_every"], cfg["power"])

  def init(params):
    state = magnitude.initial_state(params, cfg)
    importance = jax.tree.map(lambda m: None if m is None else jnp.zeros_like(m, jnp.float32), state.masks,
                              is_leaf=masks_lib.is_none)
    return state._replace(extra=importance)

  def observe(params, grads, state, step):
    del step  # every step counts the same
    term = scores.movement_increment(params, grads, state.masks)
    return state._replace(extra=jax.tree.map(lambda s, d: None if s is None else s + d, state.extra, term,
                                             is_leaf=masks_lib.is_none))

  def update(params, grads, state, step):
    del grads  # the importance already holds the gradients
    plan = base.make_plan(params, cfg)
    importance = base.leaves_at(state.extra, plan)
    old = base.leaves_at(state.masks, plan)
    new = base.select_masks(plan, importance, sched.sparsity(step), eligible=old)
    return state._replace(masks=base.from_leaves(params, plan, new))

  return base.Pruner(init, sched.is_update, update, observe, cfg)
