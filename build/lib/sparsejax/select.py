"""Exact top-k selection by score without sorting.

A full sort of the scores (what jaxpruner does at every mask update) costs O(n log n) time and several copies of the
scores in memory. Here the k-th largest score is found by a binary search over the 32 bits of an order-preserving
integer key: pass b decides bit b of the threshold by counting the keys at or above a candidate, so a selection is 32
O(n) counting passes plus, only when scores tie at the threshold, a binary search over positions (again counting) that
keeps the lowest positions first. Memory stays near one copy of the scores, `k` may be a traced value, and because
every pass is an elementwise compare and a sum, a global threshold over sharded arrays only needs summed counts.

>>> import jax.numpy as jnp
>>> topk_mask(jnp.array([0.3, -1.0, 2.0, 0.3]), 2).tolist()
[True, False, True, False]
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_BITS = 32


def sortable_key(scores: jax.Array) -> jax.Array:
  """uint32 keys with the order of the float32 scores; NaN ranks as -inf; every key is >= 1, so 0 marks 'excluded'.

  Integer operations only: XLA:CPU flushes denormals to zero in float compares, which would rank 1e-40 equal to 0.
  """
  bits = lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
  magnitude = bits & jnp.uint32(0x7FFFFFFF)
  bits = jnp.where(magnitude > jnp.uint32(0x7F800000), jnp.uint32(0xFF800000), bits)  # NaN -> -inf
  bits = jnp.where(magnitude == 0, jnp.uint32(0), bits)  # -0.0 and +0.0 tie
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(1 << 31))


def _keys(scores, eligible):
  keys = [sortable_key(s) for s in scores]
  if eligible is not None:
    keys = [k if e is None else jnp.where(e, k, jnp.uint32(0)) for k, e in zip(keys, eligible)]
  return keys


def _bisect(count_at_least, k, init, nbits):
  """Largest t (built bit by bit from the top) with count_at_least(t) >= k; t has k's shape."""

  def body(i, t):
    cand = t | (jnp.uint32(1) << (nbits - 1 - i).astype(jnp.uint32))
    return jnp.where(count_at_least(cand) >= k, cand, t)

  return lax.fori_loop(0, nbits, body, init)


def _select(keys, k, weights, per_layer):
  """Masks of the top-k keys; k: (L,) when per_layer else (); weights: int per array (group sizes)."""
  n = len(keys)
  pick = (lambda v, i: v[i]) if per_layer else (lambda v, i: v)

  def reduce(counts):
    return jnp.stack(counts) if per_layer else sum(counts[1:], counts[0])

  def count(pred):
    return reduce([weights[i] * jnp.sum(pred(i), dtype=jnp.int32) for i in range(n)])

  shape = (n,) if per_layer else ()
  t = _bisect(lambda c: count(lambda i: keys[i] >= pick(c, i)), k, jnp.zeros(shape, jnp.uint32), _BITS)
  above = [keys[i] > pick(t, i) for i in range(n)]
  tied = [(keys[i] == pick(t, i)) & (keys[i] > 0) for i in range(n)]
  need = k - count(lambda i: above[i])  # kept from the ties, lowest positions first
  n_tied = count(lambda i: tied[i])

  sizes = [key.size for key in keys]
  offsets = [0] * n if per_layer else [sum(sizes[:i]) for i in range(n)]
  total = max(sizes) if per_layer else sum(sizes)
  nbits = max(int(total).bit_length(), 1)

  def positions(i):
    return offsets[i] + jnp.arange(sizes[i], dtype=jnp.int32).reshape(keys[i].shape)

  def split_ties():
    # Smallest bound p with count(tied & pos < p) >= need, found as the largest p with count(tied & pos < p) < need.
    def below(p):
      return count(lambda i: tied[i] & (positions(i) < pick(p, i).astype(jnp.int32)))
    p = _bisect(lambda c: jnp.where(below(c) < need, need, need - 1), need, jnp.zeros(shape, jnp.uint32), nbits)
    return [tied[i] & (positions(i) <= pick(p, i).astype(jnp.int32)) for i in range(n)]

  take_all = jnp.all(n_tied <= need)
  ties = lax.cond(take_all, lambda: tied, split_ties)
  return [a | b for a, b in zip(above, ties)]


def _clip_k(k, limit):
  return jnp.clip(jnp.asarray(k, jnp.int32), 0, limit)


def topk_mask(scores: jax.Array, k, eligible: Optional[jax.Array] = None) -> jax.Array:
  """Bool mask of the k largest scores (ties: lowest flat index first). k may be traced; clipped to [0, n]."""
  return topk_masks([scores], [k], None if eligible is None else [eligible])[0]


def topk_masks(scores: Sequence[jax.Array], ks, eligible: Optional[Sequence] = None) -> list[jax.Array]:
  """Per-array top-k: the ks[i] largest of scores[i], all arrays searched in one loop."""
  keys = _keys(scores, eligible)
  limits = jnp.array([_eligible_count(key) for key in keys]) if eligible is not None else jnp.array(
      [key.size for key in keys], jnp.int32)
  k = jnp.minimum(jnp.stack([_clip_k(x, key.size) for x, key in zip(ks, keys)]), limits)
  return _select(keys, k, [1] * len(keys), per_layer=True)


def global_topk_masks(scores: Sequence[jax.Array], k, eligible: Optional[Sequence] = None,
                      weights: Optional[Sequence[int]] = None) -> list[jax.Array]:
  """One threshold over all arrays: the k largest scores overall (ties: earlier array, then lower index).

  Args:
    scores: arrays of scores (any shapes).
    k: how many to keep, counted in weights (may be traced).
    eligible: optional bool arrays (or None entries); ineligible entries are never selected nor counted.
    weights: optional int per array: what one selected entry counts for (group sizes for structured pruning). The
      selection then keeps the smallest set of top entries whose weighted count reaches k.
  """
  keys = _keys(scores, eligible)
  weights = [1] * len(keys) if weights is None else [int(w) for w in weights]
  limit = sum(w * _eligible_count(key) for w, key in zip(weights, keys))
  return _select(keys, jnp.minimum(_clip_k(k, sum(w * key.size for w, key in zip(weights, keys))), limit),
                 weights, per_layer=False)


def _eligible_count(key):
  return jnp.sum(key > 0, dtype=jnp.int32)
