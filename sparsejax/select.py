"""Exact top-k selection by score without sorting.

A full sort of the scores (what jaxpruner does at every mask update) costs O(n log n) time and several copies of the
scores in memory. Here the k-th largest score is found by a radix select over an order-preserving uint32 key: each
pass histograms the next digit of the keys whose higher digits equal the prefix found so far (a scatter-add into
2**w bins) and keeps the bin where the count from the top reaches k, so the threshold takes 3 passes (digits of 11,
11 and 10 bits; the packed layout, for arrays that are not sharded). The last histogram also gives how many keys tie
at the threshold and how many of them to keep; only when some but not all are kept are the ties split, lowest
positions first: one more pass counts the tied entries of each row, and cumulative sums over rows (and over the one
row split per array) give the last position kept (`_Packed.lowest`, past 2**22 entries; below, a binary search over
positions, which compiles faster). `k` may be a traced value.

The per-layer layout (sharded arrays) keeps the binary search over the 32 bits of the key, a compare and a count per
bit, and over positions for the ties, so that only one count per array crosses devices (a radix pass would sum a
256-bin histogram across devices; tests/test_sharded_core.py bounds those all-reduces by the layer count).

Measured on a 2-core CPU shared with other work, 10**8 float32 scores, k = 10**7: 0.85-0.91 s for `topk_mask`
(3.4 s before); with the radix threshold but the ties split by a binary search over positions (27 counting passes:
10**8 normal samples tie at the threshold) it took 2.7 s. XLA:CPU runs a scatter serially (about 3 ns an entry), so
wider digits (fewer passes) win; comparing against several thresholds per pass was 10x slower (XLA materialised the
broadcast compare).
The scatter needs its indices (int16 while L * 2048 < 2**15) and its updates as arrays: temporary memory is about 3x
the scores (keys, indices, updates), not 1x.

Counts are exact at any size the layouts accept: they are int32 while every count fits (the common case, unchanged
dtypes), int64 when `jax_enable_x64` is on, and uint32 otherwise (exact below 2**32; subtractions are written never to
go below zero). Without x64 a selection whose weighted total reaches 2**32 raises a ValueError naming the flag, and
positions are uint32, so one layout holds under 2**32 entries.

>>> import jax.numpy as jnp
>>> topk_mask(jnp.array([0.3, -1.0, 2.0, 0.3]), 2).tolist()
[True, False, True, False]
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_BITS = 32
_INT32_MAX = 2**31 - 1
# Ties of packed selections of more than 2**22 entries are split by `_Packed.lowest` (one pass; 0.3 s more to compile),
# smaller ones by a binary search over positions (a pass per bit of a position, one compiled loop body).
_LOWEST_BITS = 22


def count_dtype(total: int):
  """dtype of counts up to `total` (an exact Python int): int32 when it fits, else int64 under `jax_enable_x64`, else
  uint32 below 2**32; a ValueError past that (the counts could not be exact)."""
  if total <= _INT32_MAX:
    return jnp.int32
  if jax.config.jax_enable_x64:
    return jnp.int64
  if total < 2**32:
    return jnp.uint32
  raise ValueError(f"select: counts up to {total} need 64-bit integers; set jax.config.update('jax_enable_x64', True)")


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


def _bisect(count_at_least, k, init, nbits):
  """Largest t (built bit by bit from the top) with count_at_least(t) >= k; t has k's shape."""

  def body(i, t):
    cand = t | (jnp.uint32(1) << (nbits - 1 - i).astype(jnp.uint32))
    return jnp.where(count_at_least(cand) >= k, cand, t)

  return lax.fori_loop(0, nbits, body, init)


_CHUNK = 1024  # row length of the packed layout
MODES = ("auto", "packed", "per_layer")


def typed_sharded(x) -> bool:
  """Whether x's type carries a sharded axis (an Explicit mesh)."""
  try:
    spec = jax.typeof(x).sharding.spec
  except (AttributeError, TypeError):
    return False
  return any(s is not None for s in spec)


def per_layer(arrays, mode: str = "auto") -> bool:
  """Whether a selection over `arrays` runs layer by layer where their shards are ('per_layer'), or on one packed
  array ('packed', fewer kernels to compile). 'auto': per layer when an array's type is sharded (Explicit meshes) or
  when a mesh of more than one device is set (`jax.set_mesh`), packed otherwise."""
  if mode not in MODES:
    raise ValueError(f"config.sparsity.selection: got {mode!r}; accepted values: {', '.join(MODES)}")
  if mode != "auto":
    return mode == "per_layer"
  return jax.sharding.get_abstract_mesh().size > 1 or any(typed_sharded(a) for a in arrays)


class _Packed:
  """All arrays of a selection in one (rows, chunk) layout: each flattened and padded to whole rows.

  Packing the raw inputs (a concatenation of reshaped arrays and zero fillers, one kernel) and computing the scores
  and keys once on the packed array is what keeps the compiled selection the same handful of kernels for 2 layers
  or 200: per-layer keys made XLA compile one kernel per layer, and one reduction per layer in the search loop made
  its compile time grow faster than linearly with the number of layers (4.6 s against 0.9 s for ResNet-20). Packing
  moves every array to one place, so it is for arrays that are not sharded (see `_Layers`).
  """

  def __init__(self, shapes, weights):
    self.shapes = [tuple(s) for s in shapes]
    self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
    self.chunk = min(_CHUNK, 1 << max(max(self.sizes) - 1, 0).bit_length())
    self.rows = [max(-(-s // self.chunk), 1) for s in self.sizes]
    self.row_layer = np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.rows)
    # entries of each row that belong to its array: chunk for full rows, the remainder for the last one, 0 after
    self.row_valid = np.concatenate([np.clip(s - np.arange(r) * self.chunk, 0, self.chunk)
                                     for s, r in zip(self.sizes, self.rows)]).astype(np.int32)
    self.row_weight = np.repeat(np.asarray(weights, np.int32), self.rows)
    self.weighted = any(w != 1 for w in weights)
    self.nbits = max(int(sum(self.rows) * self.chunk).bit_length(), 1)  # of a position
    if sum(self.rows) * self.chunk >= 2**32:
      raise ValueError("select: more than 2**32 packed entries in one selection")
    self.dtype = count_dtype(sum(int(w) * s for w, s in zip(weights, self.sizes)))

  def pack(self, arrays, dtype=None):
    parts = []
    for a, s, r in zip(arrays, self.sizes, self.rows):
      a = jnp.asarray(a) if dtype is None else jnp.asarray(a).astype(dtype)
      parts.append(a.reshape(-1))
      if r * self.chunk > s:
        parts.append(jnp.zeros((r * self.chunk - s,), a.dtype))
    return jnp.concatenate(parts).reshape(-1, self.chunk)

  def keys(self, scores, eligible, score_fn):
    """uint32 keys (rows, chunk) of score_fn(scores); 0 for padding and entries not eligible."""
    packed = self.pack(scores)
    if score_fn is not None:
      packed = score_fn(packed)
    cols = lax.broadcasted_iota(jnp.int32, (len(self.row_layer), self.chunk), 1)
    ok = cols < self.row_valid[:, None]
    if eligible is not None:
      ok = ok & self.pack([jnp.ones(s, bool) if e is None else e for e, s in zip(eligible, self.shapes)], bool)
    return jnp.where(ok, sortable_key(packed), jnp.uint32(0))

  def _rows(self, pred):
    # Row sums as a matrix-vector product (exact: a row has at most 1024 ones): XLA:CPU compiles a dot as one
    # library call, where it splits a reduction into a chain of kernels.
    c = jnp.dot(pred.astype(jnp.float32), jnp.ones((self.chunk,), jnp.float32)).astype(self.dtype)
    return c * self.row_weight.astype(self.dtype) if self.weighted else c

  def counts(self, pred):
    """(L,) weighted counts of the True entries of each array."""
    c = self._rows(pred)
    n = len(self.sizes)
    return jax.ops.segment_sum(c, self.row_layer, n, indices_are_sorted=True) if n > 1 else jnp.sum(c, keepdims=True)


  width = 11  # radix digit: 3 histogram passes, at bits 21-31, 10-20 and 0-10 (bit 10 already known in the last)

  def histogram(self, keys, shift, above, prefix):
    """(L, 2**width) weighted counts of the digits (keys >> shift) % 2**width of the nonzero keys whose bits in
    `above` (a uint32 mask) equal `prefix`'s (one per array, (L,), or one, ()): one scatter-add over the keys."""
    bins = 1 << self.width
    ok = self.map(lambda x, v: (x > 0) & ((x & above) == (v & above)), prefix, keys)
    n = len(self.sizes)
    # int16 indices when they fit: the index array is what the scatter reads besides the keys (half the memory).
    itype = jnp.int16 if n * bins < 2**15 else jnp.int32
    digit = ((keys >> shift) & jnp.uint32(bins - 1)).astype(itype)
    index = digit + jnp.asarray(self.row_layer * bins, itype)[:, None] if n > 1 else digit
    index = jnp.where(ok, index, jnp.asarray(n * bins, itype))  # out of range: dropped
    one = jnp.asarray(self.row_weight.astype(self.dtype))[:, None] if self.weighted else jnp.ones((), self.dtype)
    # lax.scatter_add, not .at[].add: that one wraps negative indices and copies the index array once more.
    dims = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                       scatter_dims_to_operand_dims=(0,))
    hist = lax.scatter_add(jnp.zeros((n * bins,), self.dtype), index[..., None], jnp.broadcast_to(one, keys.shape),
                           dims, mode=lax.GatherScatterMode.FILL_OR_DROP)
    return hist.reshape(n, bins)

  def lowest(self, tied, need):
    """The tied entries of lowest positions whose weighted count reaches `need` (L,) in each array: ceil(need / w)
    of them. One pass counts the tied entries of each row; a cumulative sum over rows finds, per array, the rows
    kept whole and the one row split; a cumulative sum over that row (L rows of `chunk`) finds its last column kept.
    (A binary search over positions took one pass per bit of a position: 27 passes, 1.7 s, for 10**8 scores.)"""
    n = len(self.sizes)
    w = np.asarray(self.row_weight[np.cumsum(self.rows) - 1], np.int64)  # each array's weight
    m = (need + jnp.asarray(w - 1, need.dtype)) // jnp.asarray(w, need.dtype) if self.weighted else need
    c = jnp.dot(tied.astype(jnp.float32), jnp.ones((self.chunk,), jnp.float32)).astype(self.dtype)  # per row
    first = np.cumsum([0] + self.rows[:-1])  # first row of each array
    upto = jnp.cumsum(c)
    excl = upto - c - (upto - c)[first][self.row_layer]  # tied entries before the row, within its array
    m_row = m[self.row_layer]
    whole = excl + c <= m_row
    split = (excl < m_row) & ~whole  # at most one row per array
    split_row = jax.ops.segment_max(jnp.where(split, jnp.arange(len(c)), -1), self.row_layer, n,
                                    indices_are_sorted=True)
    row = jnp.maximum(split_row, 0)
    left = jnp.where(split_row >= 0, m - jnp.minimum(m, excl[row]), 0)  # kept from the split row
    within = jnp.cumsum(tied[row].astype(self.dtype), axis=1)  # (L, chunk)
    last_col = jnp.sum(within < left[:, None], axis=1)  # the left-th tied entry's column
    rows = lax.broadcasted_iota(jnp.int32, tied.shape, 0)
    cols = lax.broadcasted_iota(jnp.int32, tied.shape, 1)
    keep_row = (rows == split_row[self.row_layer][:, None]) & (cols <= last_col[self.row_layer][:, None])
    return tied & (whole[:, None] | keep_row)

  def map(self, fn, v, *xs):
    """fn(*xs, value) on the packed arrays; v (or each of a tuple of them): one value per array, (L,), or one, ()."""
    spread = lambda a: a[self.row_layer][:, None] if jnp.ndim(a) else a  # noqa: E731
    return fn(*xs, tuple(spread(a) for a in v) if isinstance(v, tuple) else spread(v))

  def positions(self, keys, one):
    """Packed positions: earlier array, then lower flat index. `one` is a traced 1 (see _select)."""
    rows = lax.broadcasted_iota(jnp.uint32, keys.shape, 0) * jnp.uint32(self.chunk)
    return (rows + lax.broadcasted_iota(jnp.uint32, keys.shape, 1)) * one

  def unpack(self, packed):
    flat = packed.reshape(-1)
    offsets = np.cumsum([0] + [r * self.chunk for r in self.rows])
    return [flat[o:o + s].reshape(shape) for o, s, shape in zip(offsets, self.sizes, self.shapes)]


def flat_index(shape) -> jax.Array:
  """uint32 row-major flat index of every entry of an array of `shape` (modulo 2**32), built from iotas in that shape,
  so that it takes the sharding of the array it is combined with instead of being one replicated vector."""
  pos, stride = jnp.zeros(shape, jnp.uint32), 1
  for d in reversed(range(len(shape))):
    pos = pos + lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  return pos


class _Layers:
  """Each array in its own shape, so its keys and masks keep its sharding: every pass is elementwise on the shards
  plus one sum per array, and only those counts (int32 scalars) cross devices. One reduction per array and pass
  costs compile time that `_Packed` avoids."""

  def __init__(self, shapes, weights):
    self.shapes = [tuple(s) for s in shapes]
    self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
    self.weights = np.asarray(weights, np.int32)
    self.weighted = any(w != 1 for w in weights)
    self.nbits = max(max(self.sizes).bit_length(), 1)
    if max(self.sizes) >= 2**32:
      raise ValueError("select: an array of more than 2**32 entries")
    self.dtype = count_dtype(sum(int(w) * s for w, s in zip(weights, self.sizes)))

  def keys(self, scores, eligible, score_fn):
    out = []
    for i, s in enumerate(scores):
      key = sortable_key(score_fn(s) if score_fn is not None else s)
      e = None if eligible is None else eligible[i]
      out.append(key if e is None else jnp.where(e, key, jnp.uint32(0)))
    return out

  def counts(self, pred):
    c = jnp.stack([jnp.sum(p, dtype=self.dtype) for p in pred])
    return c * self.weights.astype(self.dtype) if self.weighted else c

  # No radix here (see the module docstring): `_bisect`'s counting passes sum one count per array across devices.
  width = None

  def total(self, pred):
    return jnp.sum(self.counts(pred))

  def map(self, fn, v, *xs):
    pick = lambda a, i: a[i] if jnp.ndim(a) else a  # noqa: E731
    return [fn(*x, tuple(pick(a, i) for a in v) if isinstance(v, tuple) else pick(v, i)) for i, x in enumerate(zip(*xs))]

  def positions(self, keys, one):
    """Flat (row-major) index within each array, computed in the array's shape (and sharding)."""
    return [flat_index(k.shape) * one for k in keys]

  def unpack(self, masks):
    return list(masks)


def _radix(layout, keys, k, per_layer):
  """The k-th largest nonzero key t (per array when per_layer), how many keys equal to t to keep (k minus the count
  above t), per array how many equal t, and the (L,) eligible counts (the first histogram's sums, so k may be a
  function of them, as in `_select`): one histogram pass per digit of `layout.width` bits, from the top, in a loop
  (one compiled body: unrolled, the passes made the MLP's train step compile about 0.6 s slower).

  In each pass, the bin b kept is the highest where the count of digits >= b among the keys matching the prefix
  reaches the k still to place; the count above b leaves the prefix range, so k drops by it. With k == 0 the top bin
  is kept and t is 2**32 - 1, above every key. Counts are unsigned-safe (never below zero).
  """
  w = layout.width
  shifts = [max(_BITS - w * (i + 1), 0) for i in range(-(-_BITS // w))]
  aboves = [0] + [(0xFFFFFFFF << s) & 0xFFFFFFFF for s in shifts[:-1]]  # the bits decided before each pass
  n, dtype = len(layout.sizes), layout.dtype
  shape = (n,) if per_layer else ()

  def body(i, state):
    t, left, _, eligible = state
    shift = jnp.asarray(shifts, jnp.uint32)[i]
    hist = layout.histogram(keys, shift, jnp.asarray(aboves, jnp.uint32)[i], t)  # (L, bins)
    eligible = jnp.where(i == 0, jnp.sum(hist, axis=-1), eligible)
    kk = k(eligible) if callable(k) else k
    kk = jnp.minimum(kk, eligible if per_layer else jnp.sum(eligible))  # no more than the eligible entries
    left = jnp.where(i == 0, kk.astype(dtype), left)
    h = hist if per_layer else jnp.sum(hist, axis=0)
    at_least = jnp.flip(jnp.cumsum(jnp.flip(h, -1), -1), -1)  # count of digits >= b
    b = jnp.sum(at_least >= left[..., None], axis=-1) - 1
    take = lambda a: jnp.take_along_axis(a, b[..., None], -1)[..., 0]  # noqa: E731
    left = left - (take(at_least) - take(h))  # minus the count of digits > b: never below zero
    t = (t & jnp.asarray(aboves, jnp.uint32)[i]) | (b.astype(jnp.uint32) << shift)
    tied_per = hist[jnp.arange(n), b] if per_layer else hist[:, b]
    return t, left, tied_per, eligible

  zeros = jnp.zeros((n,), dtype)
  return lax.fori_loop(0, len(shifts), body, (jnp.zeros(shape, jnp.uint32), jnp.zeros(shape, dtype), zeros, zeros))


def _select(layout, keys, k, per_layer):
  """Masks of the top-k keys (0 keys never); k: (L,) when per_layer else (), or a function of the (L,) eligible
  counts giving it. Counts are weighted by the layout's weights (group sizes). Returns (masks, eligible counts)."""
  n = len(layout.sizes)
  if layout.width:
    t, need, tied_per, eligible = _radix(layout, keys, k, per_layer)  # need: kept from the ties, lowest positions first
    above = layout.map(lambda x, v: x > v, t, keys)
  else:  # 32 compare-and-count passes: the largest t with count(keys >= t) >= k, so count(keys > t) < k
    eligible = layout.counts(layout.map(lambda x, _: x > 0, 0, keys))
    k = k(eligible) if callable(k) else k
    count = layout.counts if per_layer else layout.total
    k = jnp.minimum(k, eligible if per_layer else jnp.sum(eligible))  # no more than the eligible entries
    t = _bisect(lambda c: count(layout.map(lambda x, v: x >= v, c, keys)), k, jnp.zeros(jnp.shape(k), jnp.uint32),
                _BITS)
    above = layout.map(lambda x, v: x > v, t, keys)
    need = k - count(above)
    tied_per = layout.counts(layout.map(lambda x, v: (x == v) & (x > 0), t, keys))
  n_tied = tied_per if per_layer else jnp.sum(tied_per)

  def split_ties(tied):
    # need per array: a global selection takes its ties in array order (earlier array, then lower flat index).
    before = jnp.cumsum(tied_per) - tied_per
    need_per = need if per_layer else jnp.minimum(tied_per, need - jnp.minimum(need, before))
    if hasattr(layout, "lowest") and layout.nbits > _LOWEST_BITS:
      return layout.lowest(tied, need_per)
    # `need_per` in the expression keeps the iota inside the branch and fused.
    one = jnp.where(jnp.min(need_per) >= 0, jnp.uint32(1), jnp.uint32(0))
    positions = layout.positions(tied, one)

    # The largest bound p with count(tied & pos < p) < need; then tied & pos <= p are the `need` lowest (none when
    # need is 0).
    def below(p):
      return layout.counts(layout.map(lambda x, pos, v: x & (pos < v), p, tied, positions))
    p = _bisect(lambda c: jnp.where(below(c) < need_per, need_per, need_per - 1), need_per,
                jnp.zeros((n,), jnp.uint32), layout.nbits)
    return layout.map(lambda x, pos, v: x & (pos <= v[0]) & v[1], (p, need_per > 0), tied, positions)

  take_all = jnp.all(n_tied <= need)
  tied = layout.map(lambda x, v: (x == v) & (x > 0), t, keys)
  chosen = layout.map(lambda a, b, _: a | b, 0, above, lax.cond(take_all, lambda x: x, split_ties, tied))
  return layout.unpack(chosen), eligible


def _layout(scores, weights, mode):
  shapes = [jnp.shape(s) for s in scores]
  return (_Layers if per_layer(scores, mode) else _Packed)(shapes, weights)


def _clip_k(k, limit, dtype=jnp.int32):
  """k clipped to [0, limit] in the count dtype; negative (signed) k is clipped before the cast."""
  k = jnp.asarray(k)
  if jnp.issubdtype(k.dtype, jnp.signedinteger) or jnp.issubdtype(k.dtype, jnp.floating):
    k = jnp.maximum(k, 0)
  return jnp.minimum(k.astype(dtype), jnp.asarray(limit, dtype))


def topk_mask(scores: jax.Array, k, eligible: Optional[jax.Array] = None) -> jax.Array:
  """Bool mask of the k largest scores (ties: lowest flat index first). k may be traced; clipped to [0, n]."""
  return topk_masks([scores], [k], None if eligible is None else [eligible])[0]


def topk_masks(scores: Sequence[jax.Array], ks, eligible: Optional[Sequence] = None,
               score_fn: Optional[Callable] = None, mode: str = "auto") -> list[jax.Array]:
  """Per-array top-k: the ks[i] largest of scores[i], all arrays searched in one loop.

  Args:
    scores: arrays of scores (any shapes), or raw arrays when `score_fn` is given.
    ks: how many to keep per array (ints or traced), clipped to [0, eligible count].
    eligible: optional bool arrays (or None entries); ineligible entries are never selected.
    score_fn: optional elementwise function (jnp.abs) applied to the packed arrays: one kernel for all layers
      instead of one per layer.
    mode: 'auto', 'packed' or 'per_layer' (see `per_layer`): sharded arrays are selected per layer, where their
      shards are, moving only counts between devices.
  """
  return topk_masks_and_counts(scores, ks, eligible, score_fn, mode)[0]


def topk_masks_and_counts(scores: Sequence[jax.Array], ks, eligible: Optional[Sequence] = None,
                          score_fn: Optional[Callable] = None, mode: str = "auto"):
  """`topk_masks`, where `ks` may also be a function of the (L,) int32 eligible counts giving the (L,) ks; returns
  (masks, eligible counts), counted on the packed arrays (no reduction per layer) unless `mode` selects per layer."""
  layout = _layout(scores, [1] * len(scores), mode)
  keys = layout.keys(scores, eligible, score_fn)
  limits = np.asarray(layout.sizes)
  k = (lambda c: _clip_k(ks(c), limits, layout.dtype)) if callable(ks) else jnp.stack(
      [_clip_k(x, size, layout.dtype) for x, size in zip(ks, layout.sizes)])
  return _select(layout, keys, k, per_layer=True)


def global_topk_masks(scores: Sequence[jax.Array], k, eligible: Optional[Sequence] = None,
                      weights: Optional[Sequence[int]] = None, score_fn: Optional[Callable] = None,
                      mode: str = "auto") -> list[jax.Array]:
  """One threshold over all arrays: the k largest scores overall (ties: earlier array, then lower index).

  Args:
    scores: arrays of scores (any shapes), or raw arrays when `score_fn` is given.
    k: how many to keep, counted in weights (may be traced).
    eligible: optional bool arrays (or None entries); ineligible entries are never selected nor counted.
    weights: optional int per array: what one selected entry counts for (group sizes for structured pruning). The
      selection then keeps the smallest set of top entries whose weighted count reaches k.
    score_fn: optional elementwise function applied to the packed arrays (see `topk_masks`).
  """
  weights = [1] * len(scores) if weights is None else [int(w) for w in weights]
  layout = _layout(scores, weights, mode)
  keys = layout.keys(scores, eligible, score_fn)
  total = sum(w * s for w, s in zip(weights, layout.sizes))
  return _select(layout, keys, _clip_k(k, total, layout.dtype), per_layer=False)[0]
