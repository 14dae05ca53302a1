"""Post-training (one-shot) pruning of a trained model with a little calibration data.

`prune(model, params, batches, method=..., target=...)` returns the pruned params and their masks:

  magnitude  |W|, compared within each layer (the baseline of Wanda's and SparseGPT's tables).
  wanda      |W_ij| * ||X_j||_2, the weight times the l2 norm of its input feature over the calibration tokens,
             compared within each output unit (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
             Language Models"). The weights that stay are unchanged.
  sparsegpt  layer-wise optimal brain surgeon (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
             Accurately Pruned in One-Shot"): with H = X X^T + damp * mean(diag) * I, the upper Cholesky factor U of
             H^-1 is computed once; columns (input features) are visited in order in lazy blocks of `block_size`;
             each block's mask is chosen by w^2 / U_jj^2 (for n:m: every m columns, per output unit), and each
             pruned column's error is spread over the columns after it (w -= err * U[j, j:]), so the kept weights are
             updated to reconstruct the layer's output on the calibration inputs.

`distribution='owl'` gives each layer group its own sparsity by its outlier ratio (Yin et al. 2023, "Outlier
Weighed Layerwise Sparsity (OWL)"): the fraction D_g of Wanda scores above `owl_m` times the group's mean, rescaled to
[0, 2 * owl_lambda], centred, and turned into densities around 1 - target; more outliers, lower sparsity. A group is
the layers under one top-level module (a transformer block `block_3`, or one Dense of an MLP), as the paper takes one
decoder layer. The paper centres the densities with an unweighted mean; groups here can differ in size, so the
densities are centred with the parameter-weighted mean, which makes the counted sparsity equal the target.

Layers are pruned in the order the model calls them, each from the inputs that the already-pruned earlier layers
produce (the reference implementations do this block by block; here it is layer by layer). Layers called with the
same input (an attention block's query, key and value) are pruned together from that input. The inputs of every
`nn.Dense`, `nn.DenseGeneral` and `nn.Conv` are captured from the model itself through `flax.linen.intercept_methods`;
the model is not rewritten. Each pass over the calibration batches reduces the captured inputs of one layer group to
its statistic (Wanda: the squared norm of each input feature; SparseGPT: the Hessian X X^T of that input), so at most
one Hessian is held at a time; one compiled forward (returning the layers' inputs for one batch) serves every pass. A convolution's input is its patches (`lax.conv_general_dilated_patches`), one row per
output position.

Kernels are viewed as (inputs, outputs): a Dense kernel (in, out), an attention projection (in, heads, head_dim) as
(in, heads * head_dim), an output projection (heads, head_dim, width) as (heads * head_dim, width), a conv kernel
(kh, kw, in, out) as (kh * kw * in, out). n:m keeps n of every m consecutive inputs of each output unit, the axis
`sparsejax.granularity` groups n:m along.

A model stacked with `nn.scan` (the zoo's transformers with `scan=True`) is pruned as its unscanned twin: its
`blocks` params are split into `block_{i}` and stacked again afterwards.

>>> import jax, jax.numpy as jnp, sparsejax as sj
>>> from sparsejax.models import mlp
>>> model = mlp.mlp(10, widths=(32,))
>>> params = model.init(jax.random.key(0), jnp.zeros((1, 16)))["params"]
>>> batches = [jax.random.normal(jax.random.key(1), (64, 16))]
>>> out = sj.posttrain.prune(model, params, batches, method="wanda", target=0.5)
>>> out.summary["total"]["sparsity"]
0.5
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import granularity as granularity_lib
from sparsejax import masks as masks_lib

PyTree = Any
METHODS = ("magnitude", "wanda", "sparsegpt")
DISTRIBUTIONS = ("uniform", "owl")
GRANULARITIES = "'unstructured' or 'N:M' (e.g. '2:4', '4:8')"


class Layer(NamedTuple):
  """A prunable kernel and the module call that uses it.

  path: the kernel's param path ('block_0/attn/query/kernel'); n_in: how many leading kernel axes are inputs;
  conv: the patch arguments of a convolution (None for Dense layers).
  """
  path: str
  n_in: int
  conv: Optional[tuple] = None


class Result(NamedTuple):
  """params: pruned (for SparseGPT also reconstructed), pruned entries exactly 0; masks: bool on every pruned kernel,
  None elsewhere (a mask tree of `sparsejax.masks`); layers: per kernel path its assigned sparsity ("target"), the
  sparsity counted from the params ("sparsity") and, with OWL, its group's outlier ratio ("outlier_ratio");
  summary: `sj.summary(masks, params)`."""
  params: PyTree
  masks: PyTree
  layers: dict
  summary: dict


def _parse_granularity(granularity: str) -> Optional[tuple[int, int]]:
  if granularity == "unstructured":
    return None
  parts = str(granularity).split(":")
  if len(parts) == 2 and all(p.isdigit() for p in parts):
    n, m = int(parts[0]), int(parts[1])
    if 0 < n < m:
      return n, m
  raise ValueError(f"granularity: got {granularity!r}; accepted values: {GRANULARITIES} with 0 < N < M")


def check_options(method: str, target: Optional[float], distribution: str, granularity: str, block_size: int,
                  damp: float, owl_lambda: float, owl_m: float, where: str = "") -> tuple[float, Optional[tuple]]:
  """(target, (n, m) or None) after checking every option; errors name the option (prefixed by `where`, e.g.
  'config.posttrain.') and its accepted values."""
  if method not in METHODS:
    raise ValueError(f"{where}method: got {method!r}; accepted values: {METHODS}")
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"{where}distribution: got {distribution!r}; accepted values: {DISTRIBUTIONS}")
  try:
    nm = _parse_granularity(granularity)
  except ValueError as e:
    raise ValueError(f"{where}{e}") from None
  if nm is not None:
    want = 1.0 - nm[0] / nm[1]
    if target is not None and abs(target - want) > 1e-9:
      raise ValueError(f"{where}target: got {target}; granularity {granularity!r} keeps {nm[0]} of every {nm[1]}, so "
                       f"the accepted values are {want:g} or None")
    if distribution != "uniform":
      raise ValueError(f"{where}distribution: got {distribution!r}; accepted values with granularity "
                       f"{granularity!r}: 'uniform' (n:m fixes every layer's sparsity)")
    target = want
  if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 <= target < 1.0:
    raise ValueError(f"{where}target: got {target!r}; accepted values: a number in [0, 1)")
  if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
    raise ValueError(f"{where}block_size: got {block_size!r}; accepted values: an int >= 1 (128 in SparseGPT)")
  if nm is not None and method == "sparsegpt" and block_size % nm[1]:
    raise ValueError(f"{where}block_size: got {block_size}; accepted values with granularity {granularity!r}: a "
                     f"multiple of {nm[1]}")
  for name, v, lo in (("damp", damp, 0.0), ("owl_lambda", owl_lambda, 0.0), ("owl_m", owl_m, 0.0)):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < lo:
      raise ValueError(f"{where}{name}: got {v!r}; accepted values: a finite number >= {lo}")
  if distribution == "owl" and owl_lambda * 2 > min(target, 1 - target) + 1e-12:
    raise ValueError(f"{where}owl_lambda: got {owl_lambda}; accepted values: at most min(target, 1 - target) / 2 = "
                     f"{min(target, 1 - target) / 2:g} (densities must stay in [0, 1])")
  return float(target), nm


# ---------------------------------------------------------------------------------------------------------------- #
# Capturing layer inputs from the model.

_LAYER_TYPES = (nn.Dense, nn.DenseGeneral, nn.Conv)


def _module_path(module: nn.Module) -> str:
  return "/".join(str(p) for p in module.path)


def _layer_of(module: nn.Module, x: jax.Array) -> Layer:
  """The Layer of a Dense / DenseGeneral / Conv call on input `x`."""
  path = _module_path(module) + "/kernel"
  if isinstance(module, nn.Conv):
    if module.feature_group_count != 1:
      raise ValueError(f"post-training pruning: {path} is a grouped convolution (feature_group_count="
                       f"{module.feature_group_count}); only feature_group_count=1 is supported")
    rank = x.ndim - 2
    ks = tuple(module.kernel_size) if not isinstance(module.kernel_size, int) else (module.kernel_size,) * rank
    pad = module.padding
    if isinstance(pad, str):
      if pad.upper() not in ("SAME", "VALID"):
        raise ValueError(f"post-training pruning: {path} uses padding {pad!r}; supported: 'SAME', 'VALID' or explicit "
                         "pairs")
      pad = pad.upper()
    else:
      from flax.linen.linear import canonicalize_padding  # pylint: disable=g-import-not-at-top
      pad = tuple(tuple(p) for p in canonicalize_padding(pad, rank))
    norm = lambda v: (1,) * rank if v is None else ((v,) * rank if isinstance(v, int) else tuple(v))  # noqa: E731
    conv = (ks, norm(module.strides), pad, norm(module.input_dilation), norm(module.kernel_dilation))
    return Layer(path, rank + 1, conv)
  if isinstance(module, nn.DenseGeneral):
    if module.batch_dims:
      raise ValueError(f"post-training pruning: {path} has batch_dims {module.batch_dims}; not supported")
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    return Layer(path, len(axis))
  return Layer(path, 1)


def _rows(layer: Layer, module: nn.Module, x: jax.Array) -> jax.Array:
  """The layer's input as (tokens, inputs), inputs in the order of the kernel's flattened input axes."""
  x = jnp.asarray(x, jnp.float32)
  if layer.conv is not None:
    ks, strides, pad, lhs_dil, rhs_dil = layer.conv
    rank = len(ks)
    spatial = "HWD"[:rank] if rank <= 3 else None
    dn = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    p = jax.lax.conv_general_dilated_patches(x, ks, strides, pad, lhs_dil, rhs_dil, dimension_numbers=dn)
    c = x.shape[-1]
    p = p.reshape(p.shape[:-1] + (c,) + tuple(ks))  # features come ordered (C, *window)
    p = jnp.moveaxis(p, rank + 1, -1)  # (..., *window, C): the kernel's (kh, kw, in) order
    return p.reshape(-1, int(np.prod(ks)) * c)
  if isinstance(module, nn.DenseGeneral):
    axis = module.axis if isinstance(module.axis, (tuple, list)) else (module.axis,)
    axis = tuple(a % x.ndim for a in axis)
    x = jnp.moveaxis(x, axis, tuple(range(x.ndim - len(axis), x.ndim)))
    return x.reshape(-1, int(np.prod([x.shape[-len(axis):]])))
  return x.reshape(-1, x.shape[-1])


def _apply(model, params, variables, apply_kwargs, x):
  return model.apply({"params": params, **variables}, x, **apply_kwargs)


def discover(model: nn.Module, params: PyTree, x: jax.Array, variables: Optional[dict] = None,
             apply_kwargs: Optional[dict] = None) -> list[list[Layer]]:
  """The model's Dense / DenseGeneral / Conv calls in call order (shapes only, nothing is computed), grouped by input:
  the layers of one group are called on the same array (query, key and value of an attention block)."""
  calls, inputs = [], []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(context.module, _LAYER_TYPES) and args:
      x_in = args[0]
      inputs.append(x_in)  # keeps the tracer alive, so that its id names this input for the whole trace
      calls.append((_layer_of(context.module, x_in), id(x_in)))
    return next_fun(*args, **kwargs)

  def run(params, x):
    with nn.intercept_methods(interceptor):
      return _apply(model, params, variables or {}, apply_kwargs or {}, x)

  jax.eval_shape(run, params, x)
  groups, by_input, seen = [], {}, set()
  for layer, key in calls:
    if layer.path in seen:
      raise ValueError(f"post-training pruning: {layer.path} is called more than once in one forward pass (a shared "
                       "or recurrent layer); its inputs would mix several positions in the network")
    seen.add(layer.path)
    if key in by_input:
      by_input[key].append(layer)
    else:
      by_input[key] = [layer]
      groups.append(by_input[key])
  return groups


@functools.partial(jax.jit, static_argnames="kind")
def _stat(kind: str, rows: jax.Array) -> jax.Array:
  """Wanda: sum of squares of each input feature; SparseGPT: X^T X."""
  if kind == "wanda":
    return jnp.sum(jnp.square(rows), axis=0)
  return jnp.einsum("ti,tj->ij", rows, rows, precision=jax.lax.Precision.HIGHEST)


def inputs_fn(model, groups: Sequence[Sequence[Layer]], variables=None, apply_kwargs=None):
  """A jitted (params, x) -> {path: input rows (tokens, inputs)} of the first layer of every group (the others of a
  group share its input). One compiled forward serves every group: only the params change between the passes of a
  prune. It holds one batch's layer inputs at a time."""
  wanted = {g[0].path for g in groups}
  variables, apply_kwargs = variables or {}, apply_kwargs or {}

  def fn(params, x):
    found = {}

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name == "__call__" and isinstance(context.module, _LAYER_TYPES) and args:
        path = _module_path(context.module) + "/kernel"
        if path in wanted:
          found[path] = _rows(_layer_of(context.module, args[0]), context.module, args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      _apply(model, params, variables, apply_kwargs, x)
    missing = wanted - set(found)
    if missing:
      raise ValueError(f"post-training pruning: no input was captured for {sorted(missing)}")
    return found

  return jax.jit(fn)


def collect(inputs, params, batches: Sequence, groups: Sequence[Sequence[Layer]], kind: str) -> dict:
  """{path: statistic summed over the calibration batches} for every layer of `groups` (kind 'wanda' or
  'sparsegpt'), from the inputs that `params` produce; `inputs` is `inputs_fn(...)`."""
  total: dict = {}
  for x in batches:
    rows = inputs(params, x)
    for g in groups:
      stat = _stat(kind, rows[g[0].path])
      total[g[0].path] = stat if g[0].path not in total else total[g[0].path] + stat
  return {l.path: total[g[0].path] for g in groups for l in g}


# ---------------------------------------------------------------------------------------------------------------- #
# Per-layer selection and reconstruction. W is (outputs, inputs), as in the papers' code.

def _prune_count(size: int, sparsity: float) -> int:
  return int(np.floor(size * sparsity + 0.5))


def _keep_smallest_out(scores: jax.Array, k: int, axis: Optional[int]) -> jax.Array:
  """True (kept) except for the k smallest scores (per row along `axis`, or over all entries when None); ties go to
  the earlier position, so exactly k are pruned."""
  if axis is None:
    order = jnp.argsort(scores.reshape(-1), stable=True)
    rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
    return (rank >= k).reshape(scores.shape)
  order = jnp.argsort(scores, axis=axis, stable=True)
  rank = jnp.argsort(order, axis=axis, stable=True)
  return rank >= k


def nm_keep(scores: jax.Array, n: int, m: int) -> jax.Array:
  """Keep the n largest of every m consecutive inputs of each output (scores (outputs, inputs))."""
  rows, cols = scores.shape
  if cols % m:
    raise ValueError(f"n:m: {cols} inputs are not divisible into groups of {m}")
  g = scores.reshape(rows, cols // m, m)
  return _keep_smallest_out(g, m - n, axis=-1).reshape(rows, cols)


@functools.partial(jax.jit, static_argnames=("k", "per_row", "nm"))
def select(scores: jax.Array, k: int, per_row: bool, nm: Optional[tuple]) -> jax.Array:
  """Masks of magnitude (per layer) and Wanda (per output unit): the k lowest of each comparison group pruned, or
  n:m."""
  if nm is not None:
    return nm_keep(scores, *nm)
  return _keep_smallest_out(scores, k, 1 if per_row else None)


def wanda_scores(w: jax.Array, sumsq: jax.Array) -> jax.Array:
  """|W_ij| * ||X_j||_2 for W (outputs, inputs) and the per-input sums of squares (Sun et al. 2023, eq. 1)."""
  return jnp.abs(w) * jnp.sqrt(sumsq)[None, :]


def damped_hessian(h: jax.Array, damp: float) -> tuple[jax.Array, jax.Array]:
  """(H with dead inputs (zero diagonal) set to 1 on the diagonal and damp * mean(diag) added, dead)."""
  diag = jnp.diag(h)
  dead = diag == 0
  h = h + jnp.diag(jnp.where(dead, 1.0, 0.0))
  diag = jnp.diag(h)
  return h + damp * jnp.mean(diag) * jnp.eye(h.shape[0], dtype=h.dtype), dead


def inverse_cholesky(h: jax.Array) -> jax.Array:
  """U, upper triangular, with H^-1 = U^T U (SparseGPT's `Hinv`)."""
  lower = jnp.linalg.cholesky(h)
  eye = jnp.eye(h.shape[0], dtype=h.dtype)
  hinv = jax.scipy.linalg.cho_solve((lower, True), eye)
  hinv = (hinv + hinv.T) / 2
  return jnp.linalg.cholesky(hinv).T


@functools.partial(jax.jit, static_argnames=("nm", "block_size", "damp"))
def sparsegpt(w: jax.Array, h: jax.Array, sparsity: float = 0.5, nm: Optional[tuple] = None, block_size: int = 128,
              damp: float = 0.01, prune: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """SparseGPT on one layer: (reconstructed W with pruned entries 0, kept mask), for W (outputs, inputs) and the
  calibration Hessian H = X X^T (inputs, inputs). `prune` (bool like W) fixes which weights go instead of selecting
  them (for tests of the OBS update).

  Unstructured: in each block of `block_size` columns, the round(sparsity * size) weights of least w^2 / U_jj^2 are
  pruned (SparseGPT's adaptive mask selection); n:m: every m columns, each output's m - n of least w^2 / U_jj^2.
  """
  rows, cols = w.shape
  if nm is not None and cols % nm[1]:
    raise ValueError(f"n:m: {cols} inputs are not divisible into groups of {nm[1]}")
  h, dead = damped_hessian(h.astype(jnp.float32), damp)
  w = jnp.where(dead[None, :], 0.0, w.astype(jnp.float32))
  b = block_size
  padded = -(-cols // b) * b
  pad = padded - cols
  u = inverse_cholesky(h)
  if pad:  # padded inputs: identity rows of U, zero weights, never pruned, dropped at the end
    u = jnp.pad(u, ((0, pad), (0, pad))).at[jnp.arange(cols, padded), jnp.arange(cols, padded)].set(1.0)
    w = jnp.pad(w, ((0, 0), (0, pad)))
  real = jnp.arange(padded) < cols
  fixed = None if prune is None else jnp.pad(prune, ((0, 0), (0, pad)))
  col_ids = jnp.arange(padded)

  def block(i, carry):
    w, keep = carry
    start = i * b
    w1 = jax.lax.dynamic_slice(w, (0, start), (rows, b))
    u1 = jax.lax.dynamic_slice(u, (start, start), (b, b))
    d1 = jnp.diag(u1)
    real1 = jax.lax.dynamic_slice(real, (start,), (b,))
    if fixed is not None:
      keep1 = ~jax.lax.dynamic_slice(fixed, (0, start), (rows, b))
    elif nm is None:
      scores = jnp.where(real1[None, :], jnp.square(w1) / jnp.square(d1)[None, :], jnp.inf)
      size = jnp.sum(real1) * rows
      k = jnp.floor(size.astype(jnp.float32) * sparsity + 0.5).astype(jnp.int32)
      order = jnp.argsort(scores.reshape(-1), stable=True)
      rank = jnp.zeros(order.shape, jnp.int32).at[order].set(jnp.arange(order.size, dtype=jnp.int32))
      keep1 = (rank >= k).reshape(rows, b)
    else:
      keep1 = jnp.ones((rows, b), bool)
    err1 = jnp.zeros((rows, b), jnp.float32)

    def column(j, c):
      w1, keep1, err1 = c
      if fixed is None and nm is not None:
        n, m = nm
        g = jax.lax.dynamic_slice(w1, (0, j), (rows, m))
        gd = jax.lax.dynamic_slice(d1, (j,), (m,))
        kg = _keep_smallest_out(jnp.square(g) / jnp.square(gd)[None, :], m - n, axis=1)
        new = jax.lax.dynamic_update_slice(keep1, kg, (0, j))
        keep1 = jnp.where(j % m == 0, new, keep1)
      wj = w1[:, j]
      q = jnp.where(keep1[:, j], wj, 0.0)
      e = (wj - q) / u1[j, j]
      w1 = w1 - e[:, None] * u1[j][None, :]  # U is upper triangular: columns before j are untouched
      w1 = w1.at[:, j].set(q)
      return w1, keep1, err1.at[:, j].set(e)

    w1, keep1, err1 = jax.lax.fori_loop(0, b, column, (w1, keep1, err1))
    later = (col_ids >= start + b)[None, :]
    rows_u = jax.lax.dynamic_slice(u, (start, 0), (b, padded))
    w = jnp.where(later, w - jnp.dot(err1, rows_u, precision=jax.lax.Precision.HIGHEST), w)
    w = jax.lax.dynamic_update_slice(w, w1, (0, start))
    keep = jax.lax.dynamic_update_slice(keep, keep1, (0, start))
    return w, keep

  w, keep = jax.lax.fori_loop(0, padded // b, block, (w, jnp.ones((rows, padded), bool)))
  w, keep = w[:, :cols], keep[:, :cols]
  return jnp.where(keep, w, 0.0), keep


# ---------------------------------------------------------------------------------------------------------------- #
# OWL layer-wise sparsities.

def owl_group(path: str) -> str:
  """The OWL group of a kernel: its top-level module ('block_3' of 'block_3/mlp/fc1/kernel')."""
  return path.split("/")[0]


def outlier_ratio(scores: Sequence[jax.Array], m: float) -> float:
  """Fraction of the scores, pooled over a group's layers, above m times their mean (OWL's D)."""
  flat = jnp.concatenate([jnp.ravel(s) for s in scores])
  return int(jnp.sum(flat > m * jnp.mean(flat))) / flat.size


def owl_sparsities(ratios: dict, sizes: dict, target: float, lam: float) -> dict:
  """{group: sparsity} from {group: outlier ratio}: ratios min-max scaled to [0, 2 lam], centred on their
  size-weighted mean, densities 1 - target + that; so sum(size * sparsity) = target * sum(size)."""
  names = sorted(ratios)
  r = np.array([ratios[g] for g in names], np.float64)
  s = np.array([sizes[g] for g in names], np.float64)
  spread = r.max() - r.min()
  scaled = (r - r.min()) / spread * 2 * lam if spread > 0 else np.zeros_like(r)
  density = scaled - np.sum(scaled * s) / np.sum(s) + (1.0 - target)
  return {g: float(1.0 - d) for g, d in zip(names, density)}


# ---------------------------------------------------------------------------------------------------------------- #
# Scanned models.

def _unscan(model: nn.Module, params: PyTree):
  """(model, params, restack) of the unscanned twin of a zoo transformer with scan=True; (model, params, identity)
  for every other model."""
  if not getattr(model, "scan", False) or "blocks" not in params:
    return model, params, lambda tree: tree
  depth = jax.tree.leaves(params["blocks"])[0].shape[0]
  flat = {k: v for k, v in params.items() if k != "blocks"}
  for i in range(depth):
    flat[f"block_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["blocks"])

  def restack(tree):
    out = {k: v for k, v in tree.items() if not k.startswith("block_")}
    blocks = [tree[f"block_{i}"] for i in range(depth)]
    out["blocks"] = jax.tree.map(lambda *xs: None if xs[0] is None else jnp.stack(xs), *blocks,
                                 is_leaf=masks_lib.is_none)
    return out

  return model.clone(scan=False), flat, restack


def _block_names(params) -> list[str]:
  """block_0, block_1, ... of an unscanned twin's params, in order."""
  return sorted((k for k in params if k.startswith("block_") and k[6:].isdigit()), key=lambda k: int(k[6:]))


def _get(tree, path: str):
  for part in path.split("/"):
    tree = tree[part]
  return tree


def _set(tree: dict, path: str, value) -> dict:
  parts = path.split("/")
  if len(parts) == 1:
    return {**tree, parts[0]: value}
  return {**tree, parts[0]: _set(tree[parts[0]], "/".join(parts[1:]), value)}


def _as_dict(tree):
  """Nested plain dicts (FrozenDicts unfrozen)."""
  if hasattr(tree, "items"):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


# ---------------------------------------------------------------------------------------------------------------- #

def prune(model: nn.Module, params: PyTree, batches: Iterable, *, method: str = "wanda", target: Optional[float] = 0.5,
          distribution: str = "uniform", granularity: str = "unstructured", prunable: Optional[Sequence[str]] = None,
          variables: Optional[dict] = None, apply_kwargs: Optional[dict] = None, block_size: int = 128,
          damp: float = 0.01, owl_lambda: float = 0.08, owl_m: float = 5.0) -> Result:
  """Prunes a trained model in one shot.

  Args:
    model: the Flax linen module; called as model.apply({"params": params, **variables}, x, **apply_kwargs).
    params: its trained "params" collection.
    batches: calibration inputs x (arrays the model takes), a handful of batches; read once per layer group (a list
      is best). Unused by 'magnitude' with the uniform distribution.
    method: 'magnitude' | 'wanda' | 'sparsegpt' (see the module docstring).
    target: the fraction of the prunable weights to prune; None with an n:m granularity (1 - n/m).
    distribution: 'uniform' (every layer at `target`) | 'owl' (Yin et al. 2023).
    granularity: 'unstructured' | 'N:M'.
    prunable: regexes over param paths (as `config.sparsity.prunable`); None: every kernel of ndim >= 2 that is not an
      embedding or bias (`sparsejax.masks.is_default_prunable`).
    variables: other collections the model needs, e.g. {"batch_stats": ...}.
    apply_kwargs: keyword arguments of the model call, e.g. {"train": False}.
    block_size: SparseGPT's lazy-update block (128 in the paper).
    damp: SparseGPT's dampening, a fraction of the mean diagonal of H (0.01 in the paper).
    owl_lambda, owl_m: OWL's lambda (the spread of the layer sparsities) and M (the outlier threshold); 0.08 and 5 are
      the paper's LLaMA values.

  Returns:
    Result(params, masks, layers, summary).

  Raises:
    ValueError: a bad option (named, with its accepted values), or a prunable kernel whose input cannot be captured
      (it is not the kernel of an nn.Dense, nn.DenseGeneral or nn.Conv called once per forward pass).
  """
  target, nm = check_options(method, target, distribution, granularity, block_size, damp, owl_lambda, owl_m)
  variables = dict(variables or {})
  apply_kwargs = dict(apply_kwargs or {})
  batches = list(batches)
  params = jax.tree.map(jnp.asarray, masks_lib.pure(params))
  params = _as_dict(params)
  scanned = getattr(model, "scan", False) and "blocks" in params
  # `prunable` regexes (and the default rule) see the paths the user sees: `blocks/...` of a scanned model, each
  # slice of a stacked leaf one layer; they are then renamed to the unscanned twin's `block_{i}/...`.
  user_paths = masks_lib.prunable_paths(params, prunable, stacked=(r"^blocks/",) if scanned else None)
  model, params, restack = _unscan(model, params)
  paths = []
  for p in user_paths:
    if scanned and p.startswith("blocks/"):
      paths += [f"{b}/{p[len('blocks/'):]}" for b in _block_names(params)]
    else:
      paths.append(p)
  needs_data = method != "magnitude" or distribution == "owl"
  if needs_data and not batches:
    raise ValueError(f"batches: method {method!r} with distribution {distribution!r} needs calibration batches; got "
                     "none")
  layers = {}
  groups = []
  if needs_data:
    for group in discover(model, params, batches[0], variables, apply_kwargs):
      group = [l for l in group if l.path in paths]
      if group:
        groups.append(group)
    captured = {l.path for g in groups for l in g}
    missing = [p for p in paths if p not in captured]
    if missing:
      raise ValueError(f"post-training pruning ({method}): no input can be captured for the prunable params {missing}; "
                       "they are not the kernel of an nn.Dense, nn.DenseGeneral or nn.Conv call. Leave them out with "
                       "`prunable` regexes (e.g. '!name') or use method 'magnitude'")
    layer_info = {l.path: l for g in groups for l in g}
    inputs = inputs_fn(model, groups, variables, apply_kwargs)
  else:  # magnitude needs no inputs: a kernel's inputs are its axes up to the one n:m groups along
    layer_info = {p: Layer(p, granularity_lib.input_axis("flax", p, _get(params, p).shape) + 1) for p in paths}
    groups = [[layer_info[p]] for p in paths]

  if nm is not None:
    for p in paths:
      d_in = int(np.prod(_get(params, p).shape[:layer_info[p].n_in]))
      if d_in % nm[1]:
        raise ValueError(f"granularity: got '{granularity}', but {p} has {d_in} inputs, which do not divide into "
                         f"groups of {nm[1]}; accepted values: 'unstructured' or an N:M whose M divides the inputs of "
                         "every prunable layer (or leave that layer out with `prunable`)")
  sparsities = {p: target for p in paths}
  if distribution == "owl":
    stats = collect(inputs, params, batches, groups, "wanda")
    by_group: dict = {}
    for p in paths:
      w = _matrix(_get(params, p), layer_info[p])
      by_group.setdefault(owl_group(p), []).append(wanda_scores(w, stats[p]))
    ratios = {g: outlier_ratio(s, owl_m) for g, s in by_group.items()}
    sizes = {g: sum(int(x.size) for x in s) for g, s in by_group.items()}
    group_sparsity = owl_sparsities(ratios, sizes, target, owl_lambda)
    sparsities = {p: group_sparsity[owl_group(p)] for p in paths}
    for p in paths:
      layers[p] = {"outlier_ratio": ratios[owl_group(p)]}

  masks = {}
  for group in groups:
    stats = None
    if method != "magnitude":
      stats = collect(inputs, params, batches, [group], method)
    for layer in group:
      kernel = _get(params, layer.path)
      w = _matrix(kernel, layer)
      s = sparsities[layer.path]
      if method == "sparsegpt":
        w_new, keep = sparsegpt(w, stats[layer.path], sparsity=s, nm=nm, block_size=block_size, damp=damp)
      else:
        scores = jnp.abs(w) if method == "magnitude" else wanda_scores(w, stats[layer.path])
        per_row = method == "wanda"
        k = _prune_count(w.shape[1] if per_row else w.size, s)
        keep = select(scores, k, per_row, nm)
        w_new = jnp.where(keep, w, 0.0)
      params = _set(params, layer.path, _kernel(w_new, kernel.shape, layer).astype(kernel.dtype))
      masks[layer.path] = _kernel(keep, kernel.shape, layer)
      layers.setdefault(layer.path, {}).update(
          target=s, sparsity=float(1.0 - jnp.count_nonzero(w_new) / w_new.size))  # counted from the new weights
  mask_tree = masks_lib.map_prunable(lambda p, _: masks[p], params, paths)
  params, mask_tree = restack(params), restack(mask_tree)
  summary = masks_lib.summary(mask_tree, params)
  return Result(params, mask_tree, layers, summary)


def _matrix(kernel: jax.Array, layer: Layer) -> jax.Array:
  """The kernel as W (outputs, inputs), inputs flattened in kernel order."""
  d_in = int(np.prod(kernel.shape[:layer.n_in]))
  return jnp.asarray(kernel, jnp.float32).reshape(d_in, -1).T


def _kernel(w: jax.Array, shape: tuple, layer: Layer) -> jax.Array:
  del layer
  return w.T.reshape(shape)
