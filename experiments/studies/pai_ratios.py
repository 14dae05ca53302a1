"""Study 6: pruning at initialisation keeps layer-wise ratios, not positions; and it can collapse a deep network.

Frankle et al. 2021 ("Pruning Neural Networks at Initialization: Why are We Missing the Mark?") shuffle the masks of
SNIP, GraSP and SynFlow within each layer (same count per layer, random positions) and find the accuracy the same or
higher; Cai et al. 2022 ("Structured Pruning is All You Need for Pruning CNNs at Initialization") conclude that the
layer-wise compression ratio is what matters. Hayou et al. 2021 ("Robust Pruning at Initialization") show that on deep
networks magnitude- and sensitivity-based pruning at initialisation can prune a whole layer and leave the network
untrainable.

Scaled down: the papers prune ResNets and VGGs on CIFAR-10 / ImageNet (Frankle et al., Cai et al.) and deep
feed-forward and residual networks on MNIST / CIFAR-10 (Hayou et al.), trained for tens of epochs. Here part 1 is
LeNet-300-100 on Fashion-MNIST and part 2 an MLP with ten hidden layers of width 100 on Fashion-MNIST, each trained a
few epochs. The masks come from the library (`sj.prune_at_init`: SNIP on one batch of 100, GraSP on two at temperature
200, SynFlow with 100 rounds, all with one global threshold as the papers; magnitude at init is `oneshot`); a shuffle
is a random permutation of each layer's mask (same count, uniformly random positions), and the uniform random control
keeps the same fraction of every layer at random positions. Every arm of one seed starts from the same initial
weights and sees the same batches, and all arms of a (seed, sparsity) train together in one jitted, vmapped Adam loop
with the masks fixed (gradients and weights multiplied by the masks at every step). Sparsities and per-layer
densities are counted from the trained weights. The tiny scale (the test's) uses 10 SynFlow rounds and 3 hidden
layers for the deep MLP, to compile quickly.

`fit` and `evaluate` are the small vmapped training loop the other in-process studies (planted_tickets,
oracle_pruning) share.
"""
from __future__ import annotations

import functools

from experiments.studies import common

NAME = "pai_ratios"
TITLE = "Pruning at init: the layer-wise ratios matter, not the positions"
PAPERS = ("Frankle, Dziugaite, Roy & Carbin 2021, \"Pruning Neural Networks at Initialization: Why are We Missing the "
          "Mark?\" (ICLR 2021); Cai, Hua, Chen, Suh, De Sa & Zhang 2022, \"Structured Pruning is All You Need for "
          "Pruning CNNs at Initialization\" (arXiv:2203.02549); Hayou, Ton, Doucet & Teh 2021, \"Robust Pruning at "
          "Initialization\" (ICLR 2021).")
CLAIM = ("Frankle et al.: \"We show that, unlike pruning after training, randomly shuffling the weights these methods "
         "prune within each layer or sampling new initial values preserves or improves accuracy. As such, the "
         "per-weight pruning decisions made by these methods can be replaced by a per-layer choice of the fraction of "
         "weights to prune.\"\n"
         "Cai et al.: \"the layerwise compression ratio is the main critical factor to determine the accuracy of a CNN "
         "model pruned at initialization.\"\n"
         "Hayou et al.: \"However, for Deep NNs, such procedures remain unsatisfactory as the resulting pruned "
         "networks can be difficult to train and, for instance, they do not prevent one layer from being fully "
         "pruned.\"")
CHANCE_MARGIN = 0.05   # "untrainable": test accuracy at most chance (10 classes) + 5 points
GAP_FLOOR = 0.005      # 0.5 points: the smallest gap the positions sub-claim counts as an advantage
RULE = (
    "Three sub-claims, all at final test accuracy over the seeds. (1) Positions: for each method (SNIP, GraSP, "
    "SynFlow) and sparsity, d_s = original - shuffled per seed and margin = max(0.5 points, the larger of the two "
    "arms' standard deviations over seeds); the cell agrees when mean(d) <= margin, disagrees when d_s > 0 on every "
    "seed and mean(d) > margin, and is unclear otherwise; reproduced when every cell agrees, not reproduced when any "
    "disagrees, inconclusive otherwise. (2) Ratios: at the highest sparsity, each method's shuffled mask (its "
    "layer-wise ratios at random positions) against a random mask with uniform ratios (same total count) by the "
    "shared ordering rule: " + common.ORDERING_RULE + " Reproduced when at least two of the three methods' ratios are "
    "reproduced as better, not reproduced when at least two are not, inconclusive otherwise. (3) Collapse on the deep "
    "MLP at its highest sparsity: a method fails on a seed when a layer has no weight left (counted from the trained "
    "arrays) or its test accuracy is at most chance + 5 points (15%); reproduced when magnitude or SNIP (global, as "
    "published) fails on every seed while SynFlow (built to avoid collapse) does not fail on any seed; not reproduced "
    "when neither magnitude nor SNIP fails on any seed; inconclusive otherwise. Overall: reproduced when all three "
    "are, not reproduced when any is not, inconclusive otherwise.")

METHODS = ("snip", "grasp", "synflow")
DEEP_METHODS = ("magnitude", "snip", "synflow", "random")
DEEP_WIDTH, DEEP_LAYERS = 100, 10
LR, BATCH = 1.2e-3, 60
SCORE_BATCH = 100  # examples per SNIP / GraSP batch (GraSP's reference code: about 10 per class)


def _sparsities(ctx):
  return ctx.pick((0.9,), (0.9, 0.98))


def _deep_sparsities(ctx):
  return ctx.pick((0.99,), (0.9, 0.99))


def _steps(ctx):
  return ctx.pick(30, 1500, 5000)


def _deep_layers(ctx):
  return ctx.pick(3, DEEP_LAYERS)  # tiny: a shallower net compiles faster


def iterations(ctx):
  """SynFlow's rounds (tiny: 10, to keep the test quick)."""
  return ctx.pick(10, 100)


def setup(ctx) -> str:
  layers = _deep_layers(ctx)
  return (f"Fashion-MNIST. (1, 2) LeNet-300-100 (LeCun normal init), masks at "
          f"{', '.join(f'{100 * s:g}%' for s in _sparsities(ctx))} sparsity from SNIP (one batch of {SCORE_BATCH}), "
          f"GraSP (two batches, temperature 200) and SynFlow ({iterations(ctx)} rounds), one global threshold each as "
          "published; each mask shuffled within every layer (same per-layer count, random positions); a uniform random "
          f"mask as the ratio control. (3) An MLP with {layers} hidden ReLU layers of width {DEEP_WIDTH} (LeCun normal "
          f"init, {layers + 1} weight layers) pruned at {', '.join(f'{100 * s:g}%' for s in _deep_sparsities(ctx))} by "
          "global magnitude, SNIP and SynFlow, and a uniform random mask. Every mask trained with its weights fixed at "
          f"zero: Adam {LR:g}, batch {BATCH}, {_steps(ctx)} steps, the same initial weights and batches for every arm "
          f"of a seed. Seeds {', '.join(map(str, ctx.seeds))} (init, scoring batches, shuffles, data order). Scaled "
          "down from the papers' CIFAR-10/ImageNet CNNs and deep networks trained for tens of epochs.")


# ------------------------------------------------------------------------------------------------------------------
# The shared in-process training loop.

def fit(loss_fn, params, masks, x, y, key, *, steps: int, batch: int, lr: float):
  """Adam for `steps` steps on batches drawn uniformly (with replacement) from (x, y), the masks fixed: gradients and
  weights are multiplied by `masks` at every step (masks None: dense). One run; vmap it over masks or params."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top

  tx = optax.adam(lr)
  if masks is not None:
    params = sj.apply_masks(params, masks)
  n = x.shape[0]

  def step(carry, k):
    p, s = carry
    idx = jax.random.randint(k, (batch,), 0, n)
    g = jax.grad(loss_fn)(p, x[idx], y[idx])
    if masks is not None:
      g = sj.apply_masks(g, masks)
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
    if masks is not None:
      p = sj.apply_masks(p, masks)
    return (p, s), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, steps))
  return params


@functools.lru_cache(maxsize=None)
def fit_many(loss_fn, steps: int, batch: int, lr: float, over: str):
  """jit(vmap(fit)) over the leading axis of the masks (`over='masks'`, one shared init) or of the params
  (`over='params'`, no masks)."""
  import jax  # pylint: disable=g-import-not-at-top
  run = functools.partial(fit, loss_fn, steps=steps, batch=batch, lr=lr)
  if over == "masks":
    return jax.jit(jax.vmap(run, in_axes=(None, 0, None, None, None)))
  return jax.jit(jax.vmap(lambda p, x, y, k: run(p, None, x, y, k), in_axes=(0, None, None, None)))


def stack(trees):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, k: int):
  import jax  # pylint: disable=g-import-not-at-top
  return [jax.tree.map(lambda a: a[i], tree) for i in range(k)]


@functools.lru_cache(maxsize=None)
def _eval_many(apply_fn):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def one(p, x, y):
    logits = apply_fn(p, x)
    return (jnp.mean(jnp.argmax(logits, -1) == y),
            jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))

  return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def evaluate(apply_fn, stacked_params, x, y) -> tuple[list, list]:
  """Accuracy and mean cross-entropy of each of the stacked params on (x, y)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  acc, loss = _eval_many(apply_fn)(stacked_params, x, y)
  return [float(a) for a in np.asarray(acc)], [float(v) for v in np.asarray(loss)]


def fashion_mnist():
  """Fashion-MNIST as arrays on the device: (x_train, y_train, x_test, y_test), inputs normalised and flattened."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sparsejax.data import create_dataset  # pylint: disable=g-import-not-at-top
  return _arrays(create_dataset({"name": "fashion_mnist"}, seed=0), jnp)


def mnist1d():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sparsejax.data import create_dataset  # pylint: disable=g-import-not-at-top
  return _arrays(create_dataset({"name": "mnist1d"}, seed=0), jnp)


@functools.lru_cache(maxsize=None)
def _cached_arrays(name):
  return {"fashion_mnist": fashion_mnist, "mnist1d": mnist1d}[name]()


def data(name: str):
  """The arrays of a data set, loaded once per process."""
  return _cached_arrays(name)


def _arrays(ds, jnp):
  out = []
  for split in ("train", "test"):
    b = next(ds.eval_batches(split, ds.num_examples(split)))
    out += [jnp.asarray(b["image"].reshape(len(b["label"]), -1)), jnp.asarray(b["label"])]
  return tuple(out)


@functools.lru_cache(maxsize=None)
def xent(apply_fn):
  """Mean softmax cross-entropy of apply_fn(params, x) against integer labels (one function per apply_fn, so the
  jitted loops built on it compile once)."""
  import optax  # pylint: disable=g-import-not-at-top
  return lambda p, x, y: optax.softmax_cross_entropy_with_integer_labels(apply_fn(p, x), y).mean()


def layer_densities(masks, params) -> dict:
  """Per-layer density (kept fraction) and the total sparsity, counted from the non-zeros of the trained weights."""
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  s = sj.summary(masks, params)
  return {"layers": {p: 1.0 - d["sparsity"] for p, d in s["layers"].items()},
          "nnz": {p: d["nnz"] for p, d in s["layers"].items()}, "sparsity": s["total"]["sparsity"]}


# ------------------------------------------------------------------------------------------------------------------
# Masks.

def _model(widths):
  from sparsejax.models import mlp  # pylint: disable=g-import-not-at-top
  model = mlp.mlp(10, widths=widths)
  return model, (lambda p, x: model.apply({"params": p}, x))


_APPLY = {}


def _net(widths):
  """(model, apply_fn), one apply_fn object per network so the jitted loops are compiled once."""
  if widths not in _APPLY:
    _APPLY[widths] = _model(widths)
  return _APPLY[widths]


LENET = (300, 100)


def _masks(method, target, apply_fn, params, batches, seed, rounds=100):
  """The masks of `method` at `target` sparsity (one global threshold as published; `random`: uniform per layer)."""
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  if method == "random":
    return uniform_random(sj.create_masks(params), target, _rng(seed, 3))
  cfg = {"algorithm": {"magnitude": "oneshot"}.get(method, method), "target": target, "distribution": "global"}
  if method == "grasp":
    cfg.update(num_batches=2, temperature=200.0)
  elif method == "synflow":
    cfg.update(iterations=rounds)
  return sj.prune_at_init(sj.create_pruner(cfg), apply_fn, params, batches)


def shuffle(masks, rng):
  """`masks` with the kept entries of every layer moved to uniformly random positions (the same count per layer): a
  random permutation of each layer's flattened mask, drawn from the numpy Generator `rng` (layers in tree order)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda m: rng.permutation(np.asarray(m).ravel()).reshape(m.shape), masks)


def uniform_random(masks, target, rng):
  """Random masks keeping round((1 - target) * size) entries of every layer of `masks` (uniform ratios)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  first = jax.tree.map(lambda m: np.arange(m.size).reshape(m.shape) < int(sj.distributions.keep_count(target, m.size)),
                       masks)
  return shuffle(first, rng)


def _rng(seed, stream):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return np.random.default_rng([seed, stream])


def _scoring_batches(x, y, seed):
  idx = _rng(seed, 1).permutation(x.shape[0])[:2 * SCORE_BATCH]
  parts = [idx[i * SCORE_BATCH:(i + 1) * SCORE_BATCH] for i in (0, 1)]
  return [{"image": x[p], "label": y[p]} for p in parts]


def _train_arms(widths, arms, params, x, y, xt, yt, seed, steps):
  """Trains every arm ({name: masks}) from `params` together; returns {name: {test_accuracy, layers, sparsity}}."""
  import jax  # pylint: disable=g-import-not-at-top
  _, apply_fn = _net(widths)
  names = list(arms)
  train = fit_many(xent(apply_fn), steps, BATCH, LR, "masks")
  trained = train(params, stack([arms[n] for n in names]), x, y, jax.random.fold_in(jax.random.PRNGKey(seed), 2))
  acc, _ = evaluate(apply_fn, trained, xt, yt)
  out = {}
  for i, (n, p) in enumerate(zip(names, unstack(trained, len(names)))):
    out[n] = {"test_accuracy": acc[i], **layer_densities(arms[n], p)}
  return out


def _positions_unit(ctx, target, seed, steps):
  import jax  # pylint: disable=g-import-not-at-top
  x, y, xt, yt = data("fashion_mnist")
  model, apply_fn = _net(LENET)
  params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
  batches = _scoring_batches(x, y, seed)
  arms = {}
  for i, m in enumerate(METHODS):
    arms[m] = _masks(m, target, apply_fn, params, batches, seed, iterations(ctx))
    arms[m + "_shuffled"] = shuffle(arms[m], _rng(seed, 10 + i))
  arms["random"] = _masks("random", target, apply_fn, params, batches, seed)
  return _train_arms(LENET, arms, params, x, y, xt, yt, seed, steps)


def _collapse_unit(ctx, target, seed, steps):
  import jax  # pylint: disable=g-import-not-at-top
  x, y, xt, yt = data("fashion_mnist")
  widths = (DEEP_WIDTH,) * _deep_layers(ctx)
  model, apply_fn = _net(widths)
  params = model.init(jax.random.PRNGKey(seed), x[:1])["params"]
  batches = _scoring_batches(x, y, seed)
  arms = {m: _masks(m, target, apply_fn, params, batches, seed, iterations(ctx)) for m in DEEP_METHODS}
  return _train_arms(widths, arms, params, x, y, xt, yt, seed, steps)


def run(ctx) -> dict:
  steps = _steps(ctx)
  out = {"steps": steps, "sparsities": list(_sparsities(ctx)), "deep_sparsities": list(_deep_sparsities(ctx)),
         "deep_layers": _deep_layers(ctx), "seeds": list(ctx.seeds), "positions": [], "collapse": []}
  for target in _sparsities(ctx):
    for seed in ctx.seeds:
      r = ctx.cached(f"positions/s{target:g}_seed{seed}", lambda: _positions_unit(ctx, target, seed, steps))
      out["positions"] += [{"target": target, "seed": seed, "arm": a, **v} for a, v in r.items()]
  for target in _deep_sparsities(ctx):
    for seed in ctx.seeds:
      r = ctx.cached(f"collapse/s{target:g}_seed{seed}", lambda: _collapse_unit(ctx, target, seed, steps))
      out["collapse"] += [{"target": target, "seed": seed, "method": m, **v} for m, v in r.items()]
  return out


# ------------------------------------------------------------------------------------------------------------------
# Verdict.

def _acc(rows, key, name, target):
  return {r["seed"]: r["test_accuracy"] for r in rows if r[key] == name and r["target"] == target}


def _position_cell(results, method, target):
  orig, shuf = _acc(results["positions"], "arm", method, target), _acc(results["positions"], "arm",
                                                                         method + "_shuffled", target)
  seeds = sorted(set(orig) & set(shuf))
  d = [orig[s] - shuf[s] for s in seeds]
  margin = max(GAP_FLOOR, common.spread([orig[s] for s in seeds]), common.spread([shuf[s] for s in seeds]))
  gap = common.mean(d)
  if gap <= margin:
    kind = "agrees"
  elif all(v > 0 for v in d):
    kind = "disagrees"
  else:
    kind = "unclear"
  return kind, gap, margin, d


def _positions(results) -> common.Verdict:
  cells = {(m, t): _position_cell(results, m, t) for t in results["sparsities"] for m in METHODS}
  why = "positions (original - shuffled): " + "; ".join(
      f"{m} {100 * t:g}% {100 * c[1]:+.2f} (margin {100 * c[2]:.2f}) {c[0]}" for (m, t), c in cells.items())
  kinds = [c[0] for c in cells.values()]
  if all(k == "agrees" for k in kinds):
    return common.Verdict("reproduced", why)
  if any(k == "disagrees" for k in kinds):
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def _ratios(results) -> common.Verdict:
  top = max(results["sparsities"])
  rnd = _acc(results["positions"], "arm", "random", top)
  per = [common.ordering(_acc(results["positions"], "arm", m + "_shuffled", top), rnd,
                         f"{m} ratios vs uniform at {100 * top:g}%") for m in METHODS]
  why = "ratios: " + "; ".join(f"{p.why} ({p.verdict})" for p in per)
  kinds = [p.verdict for p in per]
  if kinds.count("reproduced") >= 2:
    return common.Verdict("reproduced", why)
  if kinds.count("not reproduced") >= 2:
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def _fails(row) -> bool:
  return min(row["nnz"].values()) == 0 or row["test_accuracy"] <= 0.1 + CHANCE_MARGIN


def _collapse(results) -> common.Verdict:
  top = max(results["deep_sparsities"])
  rows = [r for r in results["collapse"] if r["target"] == top]
  fails = {m: [_fails(r) for r in rows if r["method"] == m] for m in DEEP_METHODS}

  def says(m):
    f = fails[m]
    empty = [sum(v == 0 for v in r["nnz"].values()) for r in rows if r["method"] == m]
    acc = [r["test_accuracy"] for r in rows if r["method"] == m]
    return (f"{m}: layers emptied per seed {empty}, test acc " + "/".join(common.pct(a) for a in acc) +
            f", fails on {sum(f)} of {len(f)} seeds")

  why = f"collapse at {100 * top:g}% on the deep MLP: " + "; ".join(says(m) for m in DEEP_METHODS)
  culprit = any(fails[m] and all(fails[m]) for m in ("magnitude", "snip"))
  control = bool(fails["synflow"]) and not any(fails["synflow"])
  if culprit and control:
    return common.Verdict("reproduced", why)
  if not any(fails["magnitude"]) and not any(fails["snip"]):
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def verdict(results) -> common.Verdict:
  parts = [_positions(results), _ratios(results), _collapse(results)]
  v = common.combine(parts)
  labels = ("(1) positions", "(2) ratios", "(3) collapse")
  return common.Verdict(v.verdict, " | ".join(f"{l} {p.verdict}: {p.why}" for l, p in zip(labels, parts)))


# ------------------------------------------------------------------------------------------------------------------
# Report.

def _per_seed(d):
  return " / ".join(common.pct(d[s]) for s in sorted(d))


def _mean_layers(rows):
  paths = list(rows[0]["layers"])
  return [common.mean([r["layers"][p] for r in rows]) for p in paths], paths


def _density(x):
  return f"{100 * x:.2f}" if x >= 0.0001 or x == 0 else f"{100 * x:.3f}"


def tables(results) -> str:
  pos = results["positions"]
  rows = []
  for t in results["sparsities"]:
    for m in METHODS:
      kind, gap, margin, _ = _position_cell(results, m, t)
      orig = [r for r in pos if r["arm"] == m and r["target"] == t]
      dens, _ = _mean_layers(orig)
      rows.append([f"{100 * t:g}%", m, _per_seed(_acc(pos, "arm", m, t)),
                   _per_seed(_acc(pos, "arm", m + "_shuffled", t)),
                   f"{100 * gap:+.2f}", f"{100 * margin:.2f}", kind, " / ".join(_density(x) for x in dens),
                   f"{common.mean([r['sparsity'] for r in orig]):.4f}"])
    rnd = [r for r in pos if r["arm"] == "random" and r["target"] == t]
    rows.append([f"{100 * t:g}%", "random (uniform)", _per_seed(_acc(pos, "arm", "random", t)), "", "", "", "",
                 " / ".join(_density(x) for x in _mean_layers(rnd)[0]),
                 f"{common.mean([r['sparsity'] for r in rnd]):.4f}"])
  _, paths = _mean_layers([r for r in pos])
  out = ["Part 1-2, LeNet-300-100 (test accuracy %, per seed):", "",
         common.table(["sparsity", "method", "original mask", "shuffled in each layer", "mean gap (points)",
                       "margin", "cell", "layer densities % (" + " / ".join(paths) + ", mean over seeds)",
                       "measured sparsity"], rows)]
  crow = []
  for t in results["deep_sparsities"]:
    for m in DEEP_METHODS:
      rs = [r for r in results["collapse"] if r["method"] == m and r["target"] == t]
      dens, _ = _mean_layers(rs)
      empty = [sum(v == 0 for v in r["nnz"].values()) for r in sorted(rs, key=lambda r: r["seed"])]
      crow.append([f"{100 * t:g}%", m, _per_seed({r["seed"]: r["test_accuracy"] for r in rs}),
                   " / ".join(map(str, empty)), " ".join(_density(x) for x in dens),
                   f"{common.mean([r['sparsity'] for r in rs]):.4f}"])
  out += ["", f"Part 3, deep MLP ({results['deep_layers']} hidden layers of {DEEP_WIDTH}; test accuracy %, per "
          "seed; densities input layer first, mean over seeds):", "",
          common.table(["sparsity", "method", "test acc %", "empty layers per seed", "layer densities %",
                        "measured sparsity"], crow)]
  return "\n".join(out)


def plot(results, path: str) -> None:
  plt = common.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  pos = results["positions"]
  ts = results["sparsities"]
  width = 0.8 / (2 * len(ts))
  for j, t in enumerate(ts):
    for k, (suffix, label) in enumerate((("", "original"), ("_shuffled", "shuffled"))):
      xs = [i + (2 * j + k) * width for i in range(len(METHODS))]
      means = [100 * common.mean(list(_acc(pos, "arm", m + suffix, t).values())) for m in METHODS]
      ax1.bar(xs, means, width, label=f"{label} {100 * t:g}%", color=f"C{2 * j + k}")
      for x, m in zip(xs, METHODS):
        vals = [100 * a for a in _acc(pos, "arm", m + suffix, t).values()]
        ax1.plot([x] * len(vals), vals, "k.", ms=3)
    rnd = 100 * common.mean(list(_acc(pos, "arm", "random", t).values()))
    ax1.axhline(rnd, color=f"C{2 * j}", ls=":", lw=1)
  ax1.set_xticks([i + 0.4 - width / 2 for i in range(len(METHODS))], METHODS)
  lo = min(100 * r["test_accuracy"] for r in pos)
  ax1.set_ylim(max(0, lo - 5), None)
  ax1.set_ylabel("test accuracy %")
  ax1.set_title("LeNet-300-100, Fashion-MNIST: original vs shuffled masks\n(dotted: uniform random)", fontsize=9)
  ax1.legend(fontsize=7)
  top = max(results["deep_sparsities"])
  for i, m in enumerate(DEEP_METHODS):
    rs = [r for r in results["collapse"] if r["method"] == m and r["target"] == top]
    dens, _ = _mean_layers(rs)
    ax2.plot(range(len(dens)), [max(100 * d, 1e-3) for d in dens], "o-", color=f"C{i}",
             label=f"{m} (acc {100 * common.mean([r['test_accuracy'] for r in rs]):.1f}%)")
  ax2.set_yscale("log")
  ax2.set_xlabel("layer (0 = input layer)")
  ax2.set_ylabel("density % (0 drawn at 1e-3)")
  ax2.set_title(f"Deep MLP at {100 * top:g}% sparsity: per-layer density", fontsize=9)
  ax2.legend(fontsize=7)
  ax2.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
