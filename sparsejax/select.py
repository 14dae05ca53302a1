"""Exact top-k selection by score without sorting.

A full sort of the scores (what jaxpruner does at every mask update) costs O(n log n) time and several copies of the
scores in memory. Here the k-th largest score is found by a radix select over an order-preserving uint32 key: each
pass histograms the next digit of the keys whose higher digits equal the prefix found so far (a scatter-add into
2**w bins) and keeps the bin where the count from the top reaches k. The last histogram also gives how many keys tie
at the threshold and how many of them to keep; only when some but not all are kept are the ties split, lowest
positions first, into one last position kept per array, so the masks are written once, by one elementwise pass.
`k` may be a traced value.

Small selections sort instead (`SORT_MAX`, 2**20 entries, unsharded; mode 'sort' forces it): one stable sort of all
arrays packed flat, keyed by array then descending key, gives every threshold and last kept position with the same
tie rule. It compiles to a handful of kernels where the radix loops compile to about 80 (XLA:CPU compiles each kernel
on its own, ~10 ms each here): a train step with gmp on an MLP 784-256-256-10 has 64 kernels against 113 with the
radix select and 31 without sparsify; sorting 10**6 keys at a mask update takes tens of milliseconds.

Two radix layouts (`per_layer`):
- packed (arrays that are not sharded): all arrays in one (rows, 1024) array of keys, 3 passes of 11, 11 and 10-bit
  digits (2 of 16 bits from 2**20 entries per array). Each pass runs over blocks of rows (`_BLOCK` entries), so the
  scatter's indices and updates are block-sized and the keys are the only array of the scores' size that XLA keeps.
  Ties are split by per-row counts and cumulative sums over rows (`_Packed.lowest`, past 2**22 entries) or, below,
  by a binary search over positions (a pass per bit of a position; it compiles faster).
- per layer (sharded arrays): each array keeps its shape and sharding; 4 passes of 8-bit digits, a 256-bin histogram
  per array and pass (the scatter-add runs on each shard and GSPMD all-reduces the bins: tests/test_sharded_core.py
  checks that nothing larger crosses devices; XLA combines the arrays' histograms of a pass into one all-reduce); ties split by the same radix select over the tied entries' positions.
  On one device this is faster than the binary searches over key bits (32 passes) and positions it replaced.

XLA:CPU runs a scatter serially (about 3 ns an entry), so wider digits (fewer passes) win where nothing is summed
across devices; comparing against several thresholds per pass was 10x slower (XLA materialised the broadcast compare).
Measured on a 2-core CPU shared with other work (`experiments.bench_core --sizes 1e6,1e7,1e8 --modes
packed,per_layer`), time (ratio to argsort) and XLA temporary memory / scores: packed 1e6 0.008-0.010 s (0.016-0.021)
1.04x, 1e7 0.10-0.12 s (0.016-0.024) 1.01x, 1e8 1.0-1.24 s (0.015-0.019) 1.00x (the previous radix over whole arrays:
2.75-3.3x, and 1.5 s where this took 1.04 s in one process); per layer on one device 1e7 0.18 s (0.036), 1e8 2.8 s
(0.043), 3.5x (the binary searches: 0.39 s (0.072), 12.8 s (0.072), 3.0x; 6.7 s against 4.4 s in one process before
the ties were split by radix too).

Counts are exact at any size: per array they are int32 while every count fits (the common case, unchanged dtypes),
int64 under `jax_enable_x64`, else uint32 (below 2**32; subtractions are written never to go below zero). A global
selection whose weighted total reaches 2**32 without x64 counts in two uint32 words (`Wide`, with carries; histogram
sums split into 16-bit halves so no partial sum wraps), its k given as a Python int, a float, a (hi, lo) `Wide` or an
integer array; 'auto' then picks the per-layer layout (the packed one needs one-word counts and fewer than 2**32
entries in all). Positions are uint32, so one array must have fewer than 2**32 entries (a ValueError says so).

>>> import jax.numpy as jnp
>>> topk_mask(jnp.array([0.3, -1.0, 2.0, 0.3]), 2).tolist()
[True, False, True, False]
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec

_BITS = 32
_INT32_MAX = 2**31 - 1
_WORD = 2**32  # counts from here on need two uint32 words without x64 (patched small by tests)
# Ties of packed selections of more than 2**22 entries are split by `_Packed.lowest` (one pass; 0.3 s more to compile),
# smaller ones by a binary search over positions (a pass per bit of a position, one compiled loop body).
_LOWEST_BITS = 22
_BLOCK = 2**16  # entries per block of a packed pass: block-sized scatter indices instead of score-sized ones
_ENTRIES_PER_BIN = 16  # packed selections with this many entries per bin of 16-bit digits use them (2 passes)
_SCATTER_DIMS = lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                            scatter_dims_to_operand_dims=(0,))


def count_dtype(total: int):
  """dtype of counts up to `total` (an exact Python int): int32 when it fits, else int64 under `jax_enable_x64`, else
  uint32 below 2**32; a ValueError past that (one word could not count exactly: global selections then count in two,
  see `Wide`)."""
  if total <= _INT32_MAX:
    return jnp.int32
  if jax.config.jax_enable_x64:
    return jnp.int64
  if total < _WORD:
    return jnp.uint32
  raise ValueError(f"select: counts up to {total} need 64-bit integers; set jax.config.update('jax_enable_x64', True)")


def needs_two_words(total: int) -> bool:
  return total >= _WORD and not jax.config.jax_enable_x64


class Wide(NamedTuple):
  """A count in two uint32 words: hi * 2**32 + lo (exact up to 2**64)."""
  hi: jax.Array
  lo: jax.Array


class OneWord:
  """Count arithmetic in one integer dtype (the common case)."""

  def __init__(self, dtype):
    self.dtype = dtype

  def of(self, x):
    return jnp.asarray(x).astype(self.dtype)

  def add(self, a, b):
    return a + b

  def sub(self, a, b):  # b <= a
    return a - b

  def ge(self, a, b):
    return a >= b

  def min(self, a, b):
    return jnp.minimum(a, b)

  def where(self, c, a, b):
    return jnp.where(c, a, b)

  def sum(self, x, axis):
    return jnp.sum(self.of(x), axis)

  def cumsum(self, x, axis, reverse=False):
    return lax.cumsum(self.of(x), axis % jnp.ndim(x), reverse=reverse)

  def take(self, a, b):
    return jnp.take_along_axis(a, b[..., None], -1)[..., 0]

  def expand(self, a):
    return a[..., None]

  def narrow(self, a, dtype):  # a value known to fit `dtype`
    return a.astype(dtype)

  def clip(self, k, limit: int):
    return _clip_k(k, limit, self.dtype)


class TwoWords(OneWord):
  """Count arithmetic on `Wide` values (two uint32 words with carries), for totals of 2**32 and more without x64."""

  def __init__(self):
    super().__init__(jnp.uint32)

  def of(self, x):
    if isinstance(x, Wide):
      return x
    x = jnp.asarray(x).astype(jnp.uint32)
    return Wide(jnp.zeros_like(x), x)

  def const(self, v: int):
    return Wide(jnp.uint32(v >> 32), jnp.uint32(v & 0xFFFFFFFF))

  def add(self, a, b):
    lo = a.lo + b.lo
    return Wide(a.hi + b.hi + (lo < a.lo).astype(jnp.uint32), lo)

  def sub(self, a, b):
    return Wide(a.hi - b.hi - (a.lo < b.lo).astype(jnp.uint32), a.lo - b.lo)

  def ge(self, a, b):
    return (a.hi > b.hi) | ((a.hi == b.hi) & (a.lo >= b.lo))

  def min(self, a, b):
    return self.where(self.ge(a, b), b, a)

  def where(self, c, a, b):
    return Wide(jnp.where(c, a.hi, b.hi), jnp.where(c, a.lo, b.lo))

  def _halves(self, reduce, x):
    """reduce (a sum or cumsum) of a two-word x: the 16-bit halves of x.lo are reduced apart, exact below 2**16
    terms, and recombined with their carry."""
    x = self.of(x)
    low, high = reduce(x.lo & jnp.uint32(0xFFFF)), reduce(x.lo >> 16)
    return self.add(Wide(reduce(x.hi) + (high >> 16), high << 16), Wide(jnp.zeros_like(low), low))

  def sum(self, x, axis):
    return self._halves(lambda a: jnp.sum(a, axis), x)

  def cumsum(self, x, axis, reverse=False):
    return self._halves(lambda a: lax.cumsum(a, axis % jnp.ndim(a), reverse=reverse), x)

  def take(self, a, b):
    return Wide(super().take(a.hi, b), super().take(a.lo, b))

  def expand(self, a):
    return Wide(a.hi[..., None], a.lo[..., None])

  def narrow(self, a, dtype):
    return a.lo.astype(dtype)

  def clip(self, k, limit: int):
    """k (a Python int, `Wide`, integer or float array) as a `Wide` clipped to [0, limit]."""
    if isinstance(k, (int, np.integer)):
      return self.const(min(max(int(k), 0), limit))
    if isinstance(k, Wide):
      k = Wide(jnp.asarray(k.hi).astype(jnp.uint32), jnp.asarray(k.lo).astype(jnp.uint32))
    else:
      k = jnp.asarray(k)
      if jnp.issubdtype(k.dtype, jnp.floating):
        # Exact for integral floats: hi * 2**32 and k are both multiples of k's ulp, whose difference fits.
        k = jnp.maximum(k, 0)
        hi = jnp.floor(k * 2.0**-32)
        k = Wide(hi.astype(jnp.uint32), (k - hi * 2.0**32).astype(jnp.uint32))
      else:
        k = self.of(jnp.maximum(k, 0) if jnp.issubdtype(k.dtype, jnp.signedinteger) else k)
    return self.min(k, self.const(limit))


def _arithmetic(total: int):
  return TwoWords() if needs_two_words(total) else OneWord(count_dtype(total))


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


def _traced_one(need):
  """A uint32 1 that XLA cannot fold: positions multiplied by it stay inside the loop that uses them (hoisted out,
  they would be materialised, 4 bytes an entry, and computed at every step, mask update or not). max >= min holds
  for any dtype, unsigned included, where `x >= 0` of an unsigned x folds to true."""
  return jnp.where(jnp.max(need) >= jnp.min(need), jnp.uint32(1), jnp.uint32(0))


_CHUNK = 1024  # row length of the packed layout
MODES = ("auto", "packed", "per_layer", "sort")


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
  when a mesh of more than one device is set (`jax.set_mesh`), packed otherwise (and per layer for selections the
  packed layout cannot count exactly: see `_layout`)."""
  if mode not in MODES:
    raise ValueError(f"config.sparsity.selection: got {mode!r}; accepted values: {', '.join(MODES)}")
  if mode != "auto":
    return mode == "per_layer"
  return jax.sharding.get_abstract_mesh().size > 1 or any(typed_sharded(a) for a in arrays)


def _layer_sizes(shapes, weights):
  """Shapes, sizes, the largest weighted size of one array and the weighted total; refuses arrays of 2**32 entries."""
  shapes = [tuple(s) for s in shapes]
  sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
  for shape, size in zip(shapes, sizes):
    if size >= 2**32:
      raise ValueError(f"select: an array of shape {shape} ({size} entries); positions are uint32, so one array "
                       "must have fewer than 2**32 entries")
  weighted = [int(w) * s for w, s in zip(weights, sizes)]
  return shapes, sizes, max(weighted, default=0), sum(weighted)


class _Packed:
  """All arrays of a selection in one (rows, chunk) layout: each flattened and padded to whole rows.

  Packing the raw inputs (a concatenation of reshaped arrays and zero fillers, one kernel) and computing the scores
  and keys once on the packed array is what keeps the compiled selection the same handful of kernels for 2 layers
  or 200: per-layer keys made XLA compile one kernel per layer, and one reduction per layer in the search loop made
  its compile time grow faster than linearly with the number of layers (4.6 s against 0.9 s for ResNet-20). Packing
  moves every array to one place, so it is for arrays that are not sharded (see `_Layers`).
  """

  def __init__(self, shapes, weights):
    self.shapes, self.sizes, widest, total = _layer_sizes(shapes, weights)
    self.chunk = min(_CHUNK, 1 << max(max(self.sizes) - 1, 0).bit_length())
    self.rows = [max(-(-s // self.chunk), 1) for s in self.sizes]
    n_rows = sum(self.rows)
    self.block = max(min(_BLOCK // self.chunk, n_rows), 1)  # rows per block of a pass
    # radix digit: 2 passes of 16 bits where the entries outnumber the bins enough (10**8 scores: 0.93 s against
    # 1.06 s), else 3 of 11 bits, at bits 21-31, 10-20 and 0-10 (bit 10 already known in the last)
    self.width = 16 if len(self.sizes) * 2**16 * _ENTRIES_PER_BIN <= n_rows * self.chunk else 11
    if n_rows * self.chunk >= 2**32 or needs_two_words(total):
      raise ValueError(f"select: the packed layout counts in one word and positions below 2**32; this selection has "
                       f"{n_rows * self.chunk} packed entries and a weighted total of {total}: use mode='per_layer'")
    self.row_layer = np.repeat(np.arange(len(self.sizes), dtype=np.int32), self.rows)
    # entries of each row that belong to its array: chunk for full rows, the remainder for the last one, 0 after
    self.row_valid = np.concatenate([np.clip(s - np.arange(r) * self.chunk, 0, self.chunk)
                                     for s, r in zip(self.sizes, self.rows)]).astype(np.int32)
    self.weights = np.asarray(weights, np.int32)
    self.weighted = any(w != 1 for w in weights)
    self.nbits = max(int(n_rows * self.chunk).bit_length(), 1)  # of a position
    self.dtype = count_dtype(widest)  # of one array's counts
    self.ops = _arithmetic(total)

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

  def _blocks(self, keys, fn, init):
    """fn(keys of a block (block, chunk), their arrays (block,), their rows (block,), which rows no earlier block
    had (block,), carry) over the blocks of rows. The last block ends at the last row (it may overlap the one before:
    padding the keys to whole blocks would take more memory)."""
    row_layer, n_rows = jnp.asarray(self.row_layer), len(self.row_layer)

    def body(i, carry):
      start = jnp.minimum(i * self.block, n_rows - self.block)
      rows = start + lax.iota(jnp.int32, self.block)
      block = lax.dynamic_slice_in_dim(keys, start, self.block, 0)
      return fn(block, lax.dynamic_slice_in_dim(row_layer, start, self.block), rows, rows >= i * self.block, carry)

    return lax.fori_loop(0, -(-n_rows // self.block), body, init)

  def _row_counts(self, keys, pred):
    """(rows,) uint32 counts of the True entries of pred(keys block, arrays, rows) in each row, block by block.
    A row sum as a matrix-vector product (exact: a row has at most 1024 ones): XLA:CPU compiles a dot as one
    library call, where it splits a reduction into a chain of kernels."""
    ones = jnp.ones((self.chunk,), jnp.float32)

    def fn(block, layer, rows, fresh, out):
      del fresh  # rows counted twice get the same count twice
      c = jnp.dot(pred(block, layer, rows).astype(jnp.float32), ones).astype(jnp.uint32)
      return lax.dynamic_update_slice_in_dim(out, c, rows[0], 0)

    return self._blocks(keys, fn, jnp.zeros((len(self.row_layer),), jnp.uint32))

  def histogram(self, keys, shift, above, prefix):
    """(L, 2**width) weighted counts of the digits (keys >> shift) % 2**width of the nonzero keys whose bits in
    `above` (a uint32 mask) equal `prefix`'s (one per array, (L,), or one, ()): a scatter-add per block of rows."""
    bins, n = 1 << self.width, len(self.sizes)
    # int16 indices when they fit: the index array is what the scatter reads besides the keys.
    itype = jnp.int16 if n * bins < 2**15 else jnp.int32

    def fn(block, layer, rows, fresh, hist):
      del rows  # unused
      pre = prefix[layer][:, None] if jnp.ndim(prefix) else prefix
      ok = (block > 0) & ((block & above) == (pre & above)) & fresh[:, None]
      index = ((block >> shift) & jnp.uint32(bins - 1)).astype(itype)
      if n > 1:
        index = index + (layer * bins).astype(itype)[:, None]
      index = jnp.where(ok, index, jnp.asarray(n * bins, itype))  # out of range: dropped
      # lax.scatter_add, not .at[].add: that one wraps negative indices and copies the index array once more.
      return lax.scatter_add(hist, index[..., None], jnp.ones(block.shape, self.dtype), _SCATTER_DIMS,
                             mode=lax.GatherScatterMode.FILL_OR_DROP)

    hist = self._blocks(keys, fn, jnp.zeros((n * bins,), self.dtype)).reshape(n, bins)
    return hist * jnp.asarray(self.weights, self.dtype)[:, None] if self.weighted else hist

  def _spread(self, a, layer):
    return a[layer][:, None] if jnp.ndim(a) else a

  def cut(self, keys, t, need):
    """Per array, the last position p and whether any tied entry is kept: tied entries (keys == t) at positions <= p
    are the lowest whose weighted count reaches need (L,)."""
    if self.nbits > _LOWEST_BITS:
      return self.lowest(keys, t, need)
    one = _traced_one(need)

    def below(p):  # (L,) weighted counts of the tied entries at positions < p
      def pred(block, layer, rows):
        pos = (rows.astype(jnp.uint32)[:, None] * jnp.uint32(self.chunk)
               + lax.broadcasted_iota(jnp.uint32, block.shape, 1)) * one
        tv = self._spread(t, layer)
        return (block == tv) & (block > 0) & (pos < self._spread(p, layer))
      c = jax.ops.segment_sum(self._row_counts(keys, pred).astype(self.dtype), jnp.asarray(self.row_layer),
                              len(self.sizes), indices_are_sorted=True)
      return c * jnp.asarray(self.weights, self.dtype) if self.weighted else c

    # The largest bound p with count(tied & pos < p) < need; then tied & pos <= p are the `need` lowest.
    p = _bisect(lambda c: jnp.where(below(c) < need, need, need - 1), need, jnp.zeros(need.shape, jnp.uint32),
                self.nbits)
    return p, need > 0

  def lowest(self, keys, t, need):
    """`cut` in one pass: the tied entries of lowest positions whose weighted count reaches `need` (L,) in each array
    are the first m = ceil(need / w). One pass counts the tied entries of each row; a cumulative sum over rows finds,
    per array, the row holding the m-th; a cumulative sum over that row (L rows of `chunk`) finds its column.
    (A binary search over positions took one pass per bit of a position: 27 passes, 1.7 s, for 10**8 scores.)"""
    n = len(self.sizes)
    w = jnp.asarray(self.weights, self.dtype)
    m = (need // w + (need % w > 0).astype(self.dtype) if self.weighted else need).astype(jnp.uint32)  # ceil
    row_layer = jnp.asarray(self.row_layer)
    c = self._row_counts(keys, lambda block, layer, rows: (block == self._spread(t, layer)) & (block > 0))
    first = np.cumsum([0] + self.rows[:-1])  # first row of each array
    upto = jnp.cumsum(c)  # uint32, modulo 2**32: exact differences (fewer than 2**32 packed entries)
    excl = upto - c - (upto - c)[first][row_layer]  # tied entries before the row, within its array
    m_row = m[row_layer]
    holds = (excl < m_row) & (m_row <= excl + c)  # the row of the m-th: one per array, none when m == 0
    at = jax.ops.segment_max(jnp.where(holds, jnp.arange(len(c)), -1), row_layer, n, indices_are_sorted=True)
    row = jnp.maximum(at, 0)
    left = m - excl[row]  # the m-th is the left-th tied entry of its row
    tv = t[:, None] if jnp.ndim(t) else t
    within = jnp.cumsum(((keys[row] == tv) & (keys[row] > 0)).astype(jnp.uint32), axis=1)  # (L, chunk)
    last_col = jnp.sum(within < left[:, None], axis=1, dtype=jnp.uint32)
    return row.astype(jnp.uint32) * jnp.uint32(self.chunk) + last_col, at >= 0

  def choose(self, keys, t, last, keep):
    """The masks, packed: keys above t, and keys equal to t at positions <= last where keep (one elementwise pass)."""
    layer = jnp.asarray(self.row_layer)
    one = _traced_one(last)  # times each iota, before they are combined (their sum alone would be hoisted)
    pos = (lax.broadcasted_iota(jnp.uint32, keys.shape, 0) * (jnp.uint32(self.chunk) * one)
           + lax.broadcasted_iota(jnp.uint32, keys.shape, 1) * one)
    tv = self._spread(t, layer)
    return (keys > tv) | ((keys == tv) & (keys > 0) & (pos <= last[layer][:, None]) & keep[layer][:, None])

  def unpack(self, packed):
    flat = packed.reshape(-1)
    offsets = np.cumsum([0] + [r * self.chunk for r in self.rows])
    return [flat[o:o + s].reshape(shape) for o, s, shape in zip(offsets, self.sizes, self.shapes)]


def flat_index(shape, one=None) -> jax.Array:
  """uint32 row-major flat index of every entry of an array of `shape` (modulo 2**32), built from iotas in that shape,
  so that it takes the sharding of the array it is combined with instead of being one replicated vector. `one`: a
  traced 1 (`_traced_one`) that each iota is multiplied by, so that XLA cannot hoist the index out of a loop."""
  pos, stride = jnp.zeros(shape, jnp.uint32), 1
  for d in reversed(range(len(shape))):
    step = jnp.uint32(stride % 2**32) if one is None else jnp.uint32(stride % 2**32) * one
    pos = pos + lax.broadcasted_iota(jnp.uint32, shape, d) * step
    stride *= shape[d]
  return pos


def _histogram256(key, shift, above, prefix, dtype):
  """(256,) counts of the digits (key >> shift) % 256 of the nonzero keys whose bits in `above` equal `prefix`'s:
  a scatter-add that GSPMD runs on each shard of `key`, then all-reduces the bins (never gathers the keys)."""

  def hist(key, shift, above, prefix):
    ok = (key > 0) & ((key & above) == (prefix & above))
    index = jnp.where(ok, ((key >> shift) & jnp.uint32(255)).astype(jnp.int16), jnp.int16(256))  # 256: dropped
    return lax.scatter_add(jnp.zeros((256,), dtype), index[..., None], jnp.ones(key.shape, dtype), _SCATTER_DIMS,
                           mode=lax.GatherScatterMode.FILL_OR_DROP)

  if typed_sharded(key):  # Explicit meshes type a scatter's output only when told: sharding left to GSPMD
    hist = jax.sharding.auto_axes(hist, out_sharding=PartitionSpec())
  return hist(key, shift, above, prefix)


class _Layers:
  """Each array in its own shape, so its keys and masks keep its sharding: every pass is elementwise on the shards
  plus a 256-bin histogram per array, all that crosses devices (with the scalars of the search). One kernel per array
  and pass costs compile time that `_Packed` avoids."""

  width = 8  # radix digit: 4 histogram passes of 256 bins

  def __init__(self, shapes, weights):
    self.shapes, self.sizes, widest, total = _layer_sizes(shapes, weights)
    if len(self.sizes) >= 2**16 and needs_two_words(total):
      raise ValueError("select: more than 2**16 arrays in one two-word selection")  # TwoWords' sums are exact below
    self.weights = np.asarray(weights, np.int32)
    self.weighted = any(w != 1 for w in weights)
    self.nbits = max(max(self.sizes).bit_length(), 1)
    self.dtype = count_dtype(widest)  # of one array's counts
    self.ops = _arithmetic(total)

  def keys(self, scores, eligible, score_fn):
    out = []
    for i, s in enumerate(scores):
      key = sortable_key(score_fn(s) if score_fn is not None else s)
      e = None if eligible is None else eligible[i]
      out.append(key if e is None else jnp.where(e, key, jnp.uint32(0)))
    return out

  def histogram(self, keys, shift, above, prefix):
    pick = lambda a, i: a[i] if jnp.ndim(a) else a  # noqa: E731
    hist = jnp.stack([_histogram256(x, shift, above, pick(prefix, i), self.dtype) for i, x in enumerate(keys)])
    return hist * jnp.asarray(self.weights, self.dtype)[:, None] if self.weighted else hist

  def cut(self, keys, t, need):
    """See `_Packed.cut`. The lowest tied positions are the largest of ~position over the tied entries (distinct and
    nonzero: positions are below 2**32 - 1), so the same radix select finds the last one kept: 4 passes of 256 bins,
    where a binary search over positions took one counting pass per bit (27 at 10**8 entries: 3.2 s against 2.1 s)."""
    pick = lambda a, i: a[i] if jnp.ndim(a) else a  # noqa: E731
    one = _traced_one(need)
    inverted = [jnp.where((x == pick(t, i)) & (x > 0), ~flat_index(x.shape, one), jnp.uint32(0))
                for i, x in enumerate(keys)]
    lowest_kept = _radix(self, inverted, need, per_layer=True)[0]
    return ~lowest_kept, need > 0

  def choose(self, keys, t, last, keep):
    pick = lambda a, i: a[i] if jnp.ndim(a) else a  # noqa: E731
    one = _traced_one(last)
    return [(x > pick(t, i)) | ((x == pick(t, i)) & (x > 0) & (flat_index(x.shape, one) <= last[i]) & keep[i])
            for i, x in enumerate(keys)]

  def unpack(self, masks):
    return list(masks)


def _radix(layout, keys, k, per_layer):
  """The k-th largest nonzero key t (per array when per_layer), how many keys equal to t to keep (k minus the count
  above t), per array how many equal t, and the (L,) eligible counts (the first histogram's sums, so k may be a
  function of them, as in `_select`): one histogram pass per digit of `layout.width` bits, from the top, in a loop
  (one compiled body: unrolled, the passes made the MLP's train step compile about 0.6 s slower).

  In each pass, the bin b kept is the highest where the count of digits >= b among the keys matching the prefix
  reaches the k still to place; the count above b leaves the prefix range, so k drops by it. With k == 0 the top bin
  is kept and t is 2**32 - 1, above every key. Counts never go below zero (unsigned-safe); a global k counts in
  `layout.ops` (two words past 2**32 without x64).
  """
  w = layout.width
  shifts = [max(_BITS - w * (i + 1), 0) for i in range(-(-_BITS // w))]
  aboves = [0] + [(0xFFFFFFFF << s) & 0xFFFFFFFF for s in shifts[:-1]]  # the bits decided before each pass
  n = len(layout.sizes)
  ops = OneWord(layout.dtype) if per_layer else layout.ops

  def body(i, state):
    t, left, _, eligible = state
    shift = jnp.asarray(shifts, jnp.uint32)[i]
    above = jnp.asarray(aboves, jnp.uint32)[i]
    hist = layout.histogram(keys, shift, above, t)  # (L, bins)
    eligible = jnp.where(i == 0, jnp.sum(hist, axis=-1), eligible)
    if per_layer:
      kk = jnp.minimum(k(eligible) if callable(k) else k, eligible)  # no more than the eligible entries
      h = hist
    else:
      kk = ops.min(k, ops.sum(eligible, 0))
      h = ops.sum(hist, 0)
    left = ops.where(i == 0, kk, left)
    at_least = ops.cumsum(h, -1, reverse=True)  # count of digits >= b
    b = jnp.sum(ops.ge(at_least, ops.expand(left)), axis=-1) - 1
    left = ops.sub(left, ops.sub(ops.take(at_least, b), ops.take(h, b)))  # minus the count of digits > b
    t = (t & above) | (b.astype(jnp.uint32) << shift)
    tied_per = hist[jnp.arange(n), b] if per_layer else hist[:, b]
    return t, left, tied_per, eligible

  shape = (n,) if per_layer else ()
  zeros = jnp.zeros((n,), layout.dtype)
  left = ops.of(jnp.zeros(shape, jnp.uint32))
  return lax.fori_loop(0, len(shifts), body, (jnp.zeros(shape, jnp.uint32), left, zeros, zeros))


def _select(layout, keys, k, per_layer):
  """Masks of the top-k keys (0 keys never); k: (L,) when per_layer else one count in `layout.ops`, or a function of
  the (L,) eligible counts giving the (L,) ks. Counts are weighted by the layout's weights (group sizes). Returns
  (masks, eligible counts)."""
  n = len(layout.sizes)
  t, need, tied_per, eligible = _radix(layout, keys, k, per_layer)  # need: kept from the ties, lowest positions first
  ops = OneWord(layout.dtype) if per_layer else layout.ops
  take_all = jnp.all(ops.ge(need, tied_per if per_layer else ops.sum(tied_per, 0)))

  def split_ties(_):
    if per_layer:
      need_per = need
    else:  # a global selection takes its ties in array order (earlier array, then lower flat index)
      before = ops.sub(ops.cumsum(tied_per, 0), ops.of(tied_per))
      need_per = ops.narrow(ops.min(ops.of(tied_per), ops.sub(need, ops.min(need, before))), layout.dtype)
    return layout.cut(keys, t, need_per)

  def keep_all(_):
    return jnp.full((n,), 0xFFFFFFFF, jnp.uint32), jnp.ones((n,), bool)

  last, keep = lax.cond(take_all, keep_all, split_ties, None)
  return layout.unpack(layout.choose(keys, t, last, keep)), eligible


# Selections of at most this many entries (unsharded, 'auto') sort instead of running the radix select: one stable
# sort compiles to a few kernels where the radix loops compile to about 80 (XLA:CPU compiles each kernel on its own,
# about 10 ms each), and sorting 2**20 keys at a mask update costs tens of milliseconds.
SORT_MAX = 2**20


def _sorted_select(scores, ks, eligible, weights, score_fn, per_layer_ks: bool):
  """Top-k by one stable sort of all arrays packed flat: (masks, (L,) eligible counts). Keys sort descending (as
  ~key ascending: excluded keys, 0, go last), ties by packed position, which is array order then flat index: the tie
  rule of the radix select. Per array (`per_layer_ks`): the sort's first key is the array, so each array's entries
  stay in its own segment and its ks[i]-th entry gives its threshold key and last kept position. Global: the first
  entry whose weighted cumulative count reaches k."""
  shapes = [jnp.shape(x) for x in scores]
  sizes = [int(np.prod(sh, dtype=np.int64)) for sh in shapes]
  n, layers = sum(sizes), len(sizes)
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  flat = jnp.concatenate([jnp.asarray(x).reshape(-1) for x in scores])
  key = sortable_key(score_fn(flat) if score_fn is not None else flat)
  if eligible is not None:
    ok = jnp.concatenate([jnp.ones(sz, bool) if e is None else jnp.asarray(e).reshape(-1)
                          for e, sz in zip(eligible, sizes)])
    key = jnp.where(ok, key, jnp.uint32(0))
  pos = lax.iota(jnp.int32, n)
  # the array of each entry, from comparisons with the offsets (elementwise, one kernel)
  layer = sum((pos >= int(o)).astype(jnp.int32) for o in offsets[1:-1]) if layers > 1 else jnp.zeros(n, jnp.int32)
  # one scatter-add (a cumulative sum compiles to a chain of reduce-window kernels on XLA:CPU)
  eligible_counts = jax.ops.segment_sum((key > 0).astype(jnp.int32), layer, layers, indices_are_sorted=True)
  if per_layer_ks:
    k = ks(eligible_counts) if callable(ks) else _stack_ks(ks, sizes)
    k = jnp.minimum(jnp.maximum(jnp.asarray(k).astype(jnp.int32), 0), eligible_counts)
    _, skey, spos = lax.sort((layer, ~key, pos), num_keys=2, is_stable=True)
    at = jnp.asarray(offsets[:-1], jnp.int32) + jnp.maximum(k - 1, 0)
    t, last, keep = ~skey[at], spos[at], k > 0
    t_e, last_e, keep_e = t[layer], last[layer], keep[layer]
  else:
    w = np.asarray(weights, np.int32)
    skey, spos = lax.sort((~key, pos), num_keys=1, is_stable=True)
    k = jnp.minimum(jnp.asarray(ks).astype(jnp.int32), jnp.sum(eligible_counts * jnp.asarray(w)))  # <= eligible
    if w.max() == w.min():  # the first ceil(k / w) entries
      at = jnp.maximum((k + int(w[0]) - 1) // int(w[0]) - 1, 0)
    else:  # the first entry whose weighted count reaches k
      at = jnp.argmax(jnp.cumsum(jnp.where(skey != jnp.uint32(0xFFFFFFFF), jnp.asarray(w)[layer[spos]], 0)) >= k)
    keep_e = k > 0
    t_e, last_e = ~skey[at], spos[at]
  chosen = (key > 0) & keep_e & ((key > t_e) | ((key == t_e) & (pos <= last_e)))
  masks = [chosen[int(o):int(o) + sz].reshape(sh) for o, sz, sh in zip(offsets, sizes, shapes)]
  return masks, eligible_counts


def _sorts(scores, weights, mode) -> bool:
  """Whether this selection sorts: mode 'sort', or 'auto' on unsharded arrays of at most SORT_MAX entries whose
  weighted total fits int32."""
  if mode == "sort":
    return True
  if mode != "auto" or per_layer(scores, mode):
    return False
  sizes = [int(np.prod(jnp.shape(x), dtype=np.int64)) for x in scores]
  return sum(sizes) <= SORT_MAX and sum(int(w) * sz for w, sz in zip(weights, sizes)) <= _INT32_MAX


def _layout(scores, weights, mode):
  """The layout for `mode`; 'auto' also picks per layer where the packed layout cannot count exactly (two-word
  totals or 2**32 packed entries), where 'packed' raises."""
  shapes = [jnp.shape(s) for s in scores]
  if per_layer(scores, mode):
    return _Layers(shapes, weights)
  try:
    return _Packed(shapes, weights)
  except ValueError:
    if mode == "packed":
      raise
    return _Layers(shapes, weights)


def _clip_k(k, limit, dtype=jnp.int32):
  """k clipped to [0, limit] in the count dtype; negative (signed) k is clipped before the cast."""
  if isinstance(k, (int, np.integer)) and np.ndim(limit) == 0:
    return jnp.asarray(min(max(int(k), 0), int(limit)), dtype)
  k = jnp.asarray(k)
  if jnp.issubdtype(k.dtype, jnp.signedinteger) or jnp.issubdtype(k.dtype, jnp.floating):
    k = jnp.maximum(k, 0)
  return jnp.minimum(k.astype(dtype), jnp.asarray(limit, dtype))


def _stack_ks(ks, limits, dtype=jnp.int32) -> jax.Array:
  """(L,) counts in `dtype`, each clipped to [0, its limit]: from a list of counts, or from one (L,) array (one
  fused kernel, where a list of traced counts compiles to a kernel each)."""
  if isinstance(ks, (list, tuple)):
    return jnp.stack([_clip_k(x, size, dtype) for x, size in zip(ks, limits)])
  return _clip_k(ks, np.asarray(limits), dtype)


def topk_mask(scores: jax.Array, k, eligible: Optional[jax.Array] = None) -> jax.Array:
  """Bool mask of the k largest scores (ties: lowest flat index first). k may be traced; clipped to [0, n]."""
  return topk_masks([scores], [k], None if eligible is None else [eligible])[0]


def topk_masks(scores: Sequence[jax.Array], ks, eligible: Optional[Sequence] = None,
               score_fn: Optional[Callable] = None, mode: str = "auto") -> list[jax.Array]:
  """Per-array top-k: the ks[i] largest of scores[i], all arrays searched in one loop.

  Args:
    scores: arrays of scores (any shapes), or raw arrays when `score_fn` is given.
    ks: how many to keep per array (a list of ints or traced counts, or one (L,) integer array), clipped to
      [0, eligible count].
    eligible: optional bool arrays (or None entries); ineligible entries are never selected.
    score_fn: optional elementwise function (jnp.abs) applied to the packed arrays: one kernel for all layers
      instead of one per layer.
    mode: 'auto', 'packed' or 'per_layer' (see `per_layer`): sharded arrays are selected per layer, where their
      shards are, moving only histograms and counts between devices.
  """
  return topk_masks_and_counts(scores, ks, eligible, score_fn, mode)[0]


def topk_masks_and_counts(scores: Sequence[jax.Array], ks, eligible: Optional[Sequence] = None,
                          score_fn: Optional[Callable] = None, mode: str = "auto"):
  """`topk_masks`, where `ks` may also be a function of the (L,) eligible counts (int32 unless an array has 2**31
  entries or more) giving the (L,) ks; returns (masks, eligible counts), counted on the packed arrays (no reduction
  per layer) unless `mode` selects per layer."""
  if _sorts(scores, [1] * len(scores), mode):
    return _sorted_select(scores, ks, eligible, None, score_fn, per_layer_ks=True)
  layout = _layout(scores, [1] * len(scores), mode)
  keys = layout.keys(scores, eligible, score_fn)
  limits = np.asarray(layout.sizes)
  k = (lambda c: _clip_k(ks(c), limits, layout.dtype)) if callable(ks) else _stack_ks(ks, layout.sizes, layout.dtype)
  return _select(layout, keys, k, per_layer=True)


def global_topk_masks(scores: Sequence[jax.Array], k, eligible: Optional[Sequence] = None,
                      weights: Optional[Sequence[int]] = None, score_fn: Optional[Callable] = None,
                      mode: str = "auto") -> list[jax.Array]:
  """One threshold over all arrays: the k largest scores overall (ties: earlier array, then lower index).

  Args:
    scores: arrays of scores (any shapes), or raw arrays when `score_fn` is given.
    k: how many to keep, counted in weights (may be traced). Past 2**32 without `jax_enable_x64`, give it as a Python
      int, a float or a `Wide` (hi, lo) pair of uint32 words.
    eligible: optional bool arrays (or None entries); ineligible entries are never selected nor counted.
    weights: optional int per array: what one selected entry counts for (group sizes for structured pruning). The
      selection then keeps the smallest set of top entries whose weighted count reaches k.
    score_fn: optional elementwise function applied to the packed arrays (see `topk_masks`).
    mode: see `topk_masks`; 'auto' selects per layer when the total needs two-word counts.
  """
  weights = [1] * len(scores) if weights is None else [int(w) for w in weights]
  if _sorts(scores, weights, mode):
    total = sum(w * int(np.prod(jnp.shape(x), dtype=np.int64)) for w, x in zip(weights, scores))
    k = _clip_k(TwoWords().narrow(k, jnp.int32) if isinstance(k, Wide) else k, total)
    return _sorted_select(scores, k, eligible, weights, score_fn, per_layer_ks=False)[0]
  layout = _layout(scores, weights, mode)
  keys = layout.keys(scores, eligible, score_fn)
  total = sum(w * s for w, s in zip(weights, layout.sizes))
  return _select(layout, keys, layout.ops.clip(k, total), per_layer=False)[0]
