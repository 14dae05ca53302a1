"""Sparsity and drop-fraction schedules: pure functions of the step that work under jit.

A `SparsitySchedule` says at which steps masks are updated and what sparsity they are updated to.

>>> s = polynomial(0.0, 0.9, begin_step=0, end_step=100, update_every=10)
>>> [round(float(s.sparsity(t)), 4) for t in (0, 10, 15, 100, 500)]
[0.0, 0.2439, 0.2439, 0.9, 0.9]
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp

DROP_SCHEDULES = ("cosine", "constant", "linear")


class SparsitySchedule(NamedTuple):
  """sparsity(step): target sparsity in force at `step`; is_update(step): whether masks are recomputed at `step`."""
  sparsity: Callable
  is_update: Callable


def constant(value: float) -> SparsitySchedule:
  """Masks never recomputed by the schedule (dense training, or masks fixed at initialisation)."""
  return SparsitySchedule(lambda step: jnp.full((), value, jnp.float32) + 0 * step,
                          lambda step: jnp.zeros((), bool) | (step < 0))


def oneshot(target: float, step: int) -> SparsitySchedule:
  """Prune once, to `target`, at `step`."""
  return SparsitySchedule(lambda t: jnp.where(t >= step, target, 0.0).astype(jnp.float32),
                          lambda t: t == step)


def polynomial(initial: float, final: float, begin_step: int, end_step: int, update_every: int,
               power: float = 3.0) -> SparsitySchedule:
  """Gradual pruning of Zhu & Gupta 2017 ("To prune, or not to prune"), power 3 in the paper.

  Between t0 = begin_step and t0 + n * dt = end_step, every dt = update_every steps:
  s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** power. Before t0: s_i; after the last update: s_f. Between
  updates the sparsity of the last update stays in force.
  """
  span = max(end_step - begin_step, 1)
  last = begin_step + ((end_step - begin_step) // update_every) * update_every

  def sparsity(t):
    t = jnp.asarray(t)
    at = begin_step + jnp.clip((t - begin_step) // update_every * update_every, 0, last - begin_step)
    frac = jnp.clip((at - begin_step) / span, 0.0, 1.0)
    s = final + (initial - final) * (1.0 - frac) ** power
    s = jnp.where(t < begin_step, initial, s)
    return jnp.where(t >= end_step, final, s).astype(jnp.float32)

  def is_update(t):
    t = jnp.asarray(t)
    on_grid = (t >= begin_step) & (t <= end_step) & ((t - begin_step) % update_every == 0)
    return on_grid | (t == end_step)

  return SparsitySchedule(sparsity, is_update)


def drop_fraction(kind: str, alpha: float, end_step: int) -> Callable:
  """Fraction of a layer's kept weights replaced at a DST update (RigL, Evci et al. 2020).

  cosine: f(t) = alpha / 2 * (1 + cos(pi * t / T_end)); linear: alpha * (1 - t / T_end); constant: alpha.
  """
  if kind not in DROP_SCHEDULES:
    raise ValueError(f"config.sparsity.drop_schedule: {kind!r} is not one of {DROP_SCHEDULES}")

  def f(t):
    frac = jnp.clip(jnp.asarray(t, jnp.float32) / max(end_step, 1), 0.0, 1.0)
    if kind == "cosine":
      return 0.5 * alpha * (1.0 + jnp.cos(jnp.pi * frac))
    if kind == "linear":
      return alpha * (1.0 - frac)
    return jnp.full((), alpha, jnp.float32) + 0.0 * frac

  return f
