"""`sparsify(tx, pruner)`: pruning as an optax GradientTransformation, one call per step.

The wrapped update (1) at schedule steps recomputes the masks from the current weights and dense gradients inside
the same jitted update, under `lax.cond` (or, for pruners that never grow, a while loop of zero or one iteration,
which leaves the masks in place between updates): no re-trace, no host round trip; in the same branch it zeroes the
inner optimizer's moments of every weight that is not kept both before and after this step, so a regrown weight starts from
zero state; (2) masks the gradients, so between mask updates the moments of pruned weights stay exactly 0 without being
touched again (every optimizer's moment update is homogeneous in gradient and moment); (3) runs the inner optimizer;
and (4) returns updates that take every pruned weight to exactly 0 and never move it: for a pruned weight the update
is -w, and w + (-w) == 0 exactly in floating point. A weight grown at this step stays 0 until the next step.
Only the gradient mask and the final select run at every step; both fuse into the optimizer's elementwise pass.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import masks as masks_lib
from sparsejax.pruners.base import Pruner, PrunerState

PyTree = Any


class SparseState(NamedTuple):
  """count: updates done so far (the step); pruner: masks and the pruner's arrays; inner: the wrapped optimizer's state."""
  count: jax.Array
  pruner: PrunerState
  inner: optax.OptState


def _is_sparse_state(x) -> bool:
  return isinstance(x, SparseState)


def _mask_moments(inner_state, masks, params_def):
  """Zero, in every subtree of the optimizer state shaped like params (momenta, Adam moments), the pruned entries."""

  def is_param_like(x):
    return not isinstance(x, jax.Array) and jax.tree.structure(x) == params_def

  return jax.tree.map(lambda x: masks_lib.apply_masks(x, masks) if is_param_like(x) else x, inner_state,
                      is_leaf=is_param_like)


def sparsify(tx: optax.GradientTransformation, pruner: Pruner) -> optax.GradientTransformation:
  """Wraps any optax optimizer so that its updates prune and keep pruned weights at exactly 0.

  Args:
    tx: the inner optimizer (sgd, momentum, adam, adamw, any chain).
    pruner: from `sparsejax.create_pruner`.

  Returns:
    A GradientTransformation whose `update(grads, state, params)` needs params.

  >>> import optax, jax.numpy as jnp
  >>> import sparsejax as sj
  >>> tx = sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "oneshot", "target": 0.5}))
  >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])}
  >>> state = tx.init(params)
  >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [[0.0, -3.0], [0.0, 2.0]]
  """

  def init_fn(params):
    return SparseState(jnp.zeros((), jnp.int32), pruner.init(params), tx.init(params))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError("sparsify: update needs params (tx.update(grads, state, params))")
    pstate, step, inner = state.pruner, state.count, state.inner
    if pruner.observe is not None:
      pstate = pruner.observe(params, grads, pstate, step)
    params_def = jax.tree.structure(params)

    def _masks_and_keep(operands):
      # Masks are recomputed from this step's weights and dense gradients. keep = new & old: a weight grown at this
      # step stays exactly 0 for this step, and the moments of every weight not kept are zeroed here, once, so a
      # regrown weight starts from zero state.
      ps, inner = operands
      new = pruner.update(params, grads, ps, step)
      keep = jax.tree.map(lambda n, o: None if n is None else n & o, new.masks, ps.masks, is_leaf=masks_lib.is_none)
      return new, keep, _mask_moments(inner, keep, params_def)

    def _unchanged(operands):
      ps, inner = operands
      return ps, ps.masks, inner

    def _update_once(carry):
      i, ps, inner = carry
      # The barrier ties every input of the update to the loop counter, so that XLA cannot hoist the score
      # computation (a pass over every weight) out of the loop and run it at every step, even when the loop runs zero
      # times. Pruner arrays that the update leaves unchanged (movement's importance) would be hoisted otherwise too.
      p, g, ps, _ = lax.optimization_barrier((params, grads, ps, i))
      new = pruner.update(p, g, ps, step)
      return i + 1, new, _mask_moments(inner, new.masks, params_def)

    if pruner.grows:
      pstate, keep, inner = lax.cond(pruner.is_update(step), _masks_and_keep, _unchanged, (pstate, inner))
    else:
      # New masks are a subset of the old ones, so keep is the new masks. A loop of zero or one iteration instead of
      # lax.cond: a while loop updates its carry in place, so between mask updates the masks pass through untouched,
      # where a cond copies them twice per step on XLA:CPU (about 10% of an Adam step of an 800k-weight MLP).
      _, pstate, inner = lax.while_loop(lambda c: (c[0] == 0) & pruner.is_update(step), _update_once,
                                        (jnp.zeros((), jnp.int32), pstate, inner))
      keep = pstate.masks
    # Between mask updates the moments of pruned weights stay exactly 0 without re-masking them: their gradients are
    # masked here, and every optimizer's moment update is homogeneous in (gradient, moment). What fuses with the
    # optimizer's own elementwise pass is the gradient mask and the final select.
    updates, inner = tx.update(masks_lib.apply_masks(grads, keep), inner, params)
    updates = jax.tree.map(lambda m, u, p: u if m is None else jnp.where(m, u, -p), keep, updates, params,
                           is_leaf=masks_lib.is_none)
    return updates, SparseState(step + 1, pstate, inner)

  return optax.GradientTransformation(init_fn, update_fn)


def _find(opt_state):
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_sparse_state) if _is_sparse_state(x)]
  if len(found) != 1:
    raise ValueError(f"expected exactly one sparsify state in the optimizer state, found {len(found)}")
  return found[0]


def get_masks(opt_state) -> PyTree:
  """The mask tree (bool arrays, None where not prunable) held by a `sparsify` optimizer state."""
  return _find(opt_state).pruner.masks


def get_step(opt_state) -> jax.Array:
  return _find(opt_state).count


def set_masks(opt_state, masks: PyTree):
  """The optimizer state with its masks replaced (same shapes: a jitted step does not re-trace).

  The inner optimizer's moments of every weight that `masks` prunes are zeroed as well, as a mask update inside the
  step would do, so a weight pruned here and regrown later starts from zero state.
  """

  def swap(x):
    if _is_sparse_state(x):
      params_def = jax.tree.structure(masks, is_leaf=masks_lib.is_none)
      return x._replace(pruner=x.pruner._replace(masks=masks), inner=_mask_moments(x.inner, masks, params_def))
    return x

  return jax.tree.map(swap, opt_state, is_leaf=_is_sparse_state)
