"""Study 9: planted tickets (Fischer & Burkholz 2022, "Plant 'n' Seek: Can You Find the Winning Ticket?").

A sparse network of known structure is planted in a wider random one, the data are labelled by the planted network,
and pruning algorithms are asked to find it. Here the wide network is an MLP 16 -> 256 -> 256 -> 1 (ReLU, LeCun normal
init); the ticket uses 32 units of each hidden layer: each of its first-layer units reads 4 of the 16 inputs, each of
its second-layer units reads 4 of its 32 first-layer units, and the output reads its 32 second-layer units, with the
weights the wide network's own initial values at those positions (a strong ticket hidden in the initialisation: its
weights are distributed as every other weight, so magnitude at init cannot see them). Inputs are standard normal, the
targets the ticket's outputs standardised to mean 0 and variance 1 (the ticket reproduces them up to one scale and
shift of the output). The ticket keeps 288 of the 69,888 kernel weights (128 / 4,096, 128 / 65,536, 32 / 256).

Every pruner is given the planted count of every layer (`distribution` uniform with per-layer `overrides`), so only
the positions are tested, and its mask is compared with the planted one: recall = kept planted weights / planted
weights (= precision, the counts being equal), against chance = the expected recall of a random mask with the same
per-layer counts. Pruners: SNIP, GraSP and SynFlow at initialisation (`sj.prune_at_init`, SNIP and GraSP with the mean
squared error as loss), magnitude at initialisation, magnitude after dense training (one shot), IMP (Frankle & Carbin:
train, prune by magnitude, rewind to the initial weights, several rounds, `sj.tickets`-style with exact per-layer
counts), gradual magnitude pruning and RigL (`sj.sparsify` with the library's gmp and rigl pruners). Every mask, the
planted one and a random one are then trained from the initial weights the same way and their test error compared.

Scaled down: the paper hides tickets for several tasks (circle, helix, ReLU targets) in deeper, wider networks and
runs many more pruners (edge-popup among them) at many sparsities; here one ReLU task, one sparsity (the ticket's),
short Adam runs.
"""
from __future__ import annotations

import functools
import json

from experiments.studies import common
from experiments.studies import pai_ratios as shared

NAME = "planted_tickets"
TITLE = "Planted tickets are not found by pruning"
PAPERS = ("Fischer & Burkholz 2022, \"Plant 'n' Seek: Can You Find the Winning Ticket?\" (ICLR 2022, "
          "arXiv:2111.11153).")
CLAIM = ("\"To analyze the ability of state-of-the-art pruning to identify tickets of extreme sparsity, we design and "
         "hide such tickets solving four challenging tasks. [...] Additionally, we can now see beyond such relative "
         "trends and highlight limitations of current pruning methods. Based on our results, we conclude that the "
         "current limitations in ticket sparsity are likely of algorithmic rather than fundamental nature.\"")
FOUND, MISSED = 0.9, 0.5
RULE = (f"At the planted per-layer counts, recall of the planted mask per pruner and seed. Reproduced when every "
        f"pruner's recall is below {MISSED} on every seed (no pruner finds even half of the ticket) and the planted "
        "mask, trained from the initial weights like the others, reaches a lower test error than every pruner's mask "
        f"on every seed (a sparser-or-equal solution exists that the pruners miss). Not reproduced when some pruner's "
        f"recall is at least {FOUND} on every seed (it finds the ticket), or some pruner's mask reaches a test error "
        "at most the planted mask's on every seed (nothing better was missed). Inconclusive otherwise.")

IN, WIDTH, T1, T2, FAN = 16, 256, 32, 32, 4
PRUNERS = ("magnitude_init", "snip", "grasp", "synflow", "magnitude_trained", "imp", "gmp", "rigl")
LR, BATCH = 1e-3, 256


def _steps(ctx):
  return ctx.pick(20, 2000, 6000)


def _rounds(ctx):
  return ctx.pick(2, 5, 10)


def _samples(ctx):
  return ctx.pick((1024, 512), (8192, 4096), (32768, 8192))


def setup(ctx) -> str:
  n, nt = _samples(ctx)
  return (f"MLP {IN} -> {WIDTH} -> {WIDTH} -> 1 (ReLU, LeCun normal), ticket {IN} -> {T1} -> {T2} -> 1 planted at "
          f"random units with in-degree {FAN} (288 of 69,888 kernel weights, 99.59% sparsity), its weights the wide "
          f"network's initial values. {n} training and {nt} test inputs from N(0, I), standardised ticket outputs as "
          f"targets, mean squared error. Adam {LR:g}, batch {BATCH}, {_steps(ctx)} steps per training; IMP "
          f"{_rounds(ctx)} rounds of {_steps(ctx)} steps (density d^(r/{_rounds(ctx)}) per layer); gmp from 10% to "
          "75% of training every 20th of it; RigL from a random mask with the planted counts, 30% cosine drop every "
          f"20th of training until 75%. Seeds {', '.join(map(str, ctx.seeds))} (init, planted positions, data, "
          "batches). Every pruner gets the planted per-layer counts.")


# ------------------------------------------------------------------------------------------------------------------

_NET = {}


def _net():
  if not _NET:
    from sparsejax.models import mlp  # pylint: disable=g-import-not-at-top
    model = mlp.mlp(1, widths=(WIDTH, WIDTH))
    _NET["model"] = model
    _NET["apply"] = lambda p, x: model.apply({"params": p}, x)[:, 0]
    _NET["mse"] = lambda p, x, y: ((_NET["apply"](p, x) - y) ** 2).mean()
  return _NET["model"], _NET["apply"], _NET["mse"]


def _planted(rng):
  """The planted masks (numpy, {'dense_0', 'dense_1', 'head'} kernels) on random units with in-degree FAN."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  u1 = rng.choice(WIDTH, T1, replace=False)
  u2 = rng.choice(WIDTH, T2, replace=False)
  m0 = np.zeros((IN, WIDTH), bool)
  m1 = np.zeros((WIDTH, WIDTH), bool)
  m2 = np.zeros((WIDTH, 1), bool)
  for u in u1:
    m0[rng.choice(IN, FAN, replace=False), u] = True
  for v in u2:
    m1[rng.choice(u1, FAN, replace=False), v] = True
  m2[u2, 0] = True
  return {"dense_0": m0, "dense_1": m1, "head": m2}


def _tree(params, kernels):
  """A mask tree like params from {layer: kernel mask}: None at the biases."""
  return {name: {"kernel": kernels[name], "bias": None} for name in params}


def _kernels(masks):
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {name: np.asarray(masks[name]["kernel"]) for name in masks}


def _overrides(planted):
  return {f"^{name}/": 1.0 - int(m.sum()) / m.size for name, m in planted.items()}


def _total_sparsity(planted):
  return 1.0 - sum(int(m.sum()) for m in planted.values()) / sum(m.size for m in planted.values())


def _cfg(algorithm, planted, **kw):
  return {"algorithm": algorithm, "target": _total_sparsity(planted), "distribution": "uniform",
          "overrides": _overrides(planted), **kw}


def _topk_per_layer(scores, counts, eligible=None):
  """Boolean masks keeping the `counts[layer]` highest scores of each layer among `eligible` (numpy)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for name, s in scores.items():
    s = np.abs(np.asarray(s, np.float64)).ravel()
    if eligible is not None:
      s = np.where(eligible[name].ravel(), s, -1.0)
    keep = np.zeros(s.size, bool)
    keep[np.argsort(-s, kind="stable")[:counts[name]]] = True
    out[name] = keep.reshape(np.shape(scores[name]))
  return out


def _data(seed, n, nt, params, planted):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  _, apply_fn, _ = _net()
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
  x = jax.random.normal(key, (n + nt, IN))
  t = apply_fn(sj.apply_masks(params, _tree(params, planted)), x)
  mu, sd = jnp.mean(t[:n]), jnp.std(t[:n])
  y = (t - mu) / sd
  return x[:n], y[:n], x[n:], y[n:]


@functools.lru_cache(maxsize=None)
def _sparsify_runner(cfg_json: str, steps: int):
  """(tx, jitted run(params, opt_state, x, y, key)) for one pruner config (a JSON string, so equal configs of
  different seeds share one compiled loop)."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  _, _, mse = _net()
  tx = sj.sparsify(optax.adam(LR), sj.create_pruner(json.loads(cfg_json)))

  @jax.jit
  def run(p, s, x, y, key):
    def step(carry, k):
      p, s = carry
      idx = jax.random.randint(k, (BATCH,), 0, x.shape[0])
      u, s = tx.update(jax.grad(mse)(p, x[idx], y[idx]), s, p)
      return (optax.apply_updates(p, u), s), None
    (p, s), _ = jax.lax.scan(step, (p, s), jax.random.split(key, steps))
    return p, s

  return tx, run


def _train_sparsify(pruner_cfg, params, x, y, key, steps):
  """Training with `sj.sparsify` (gmp, rigl): returns (final masks, params)."""
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  tx, run = _sparsify_runner(json.dumps(pruner_cfg, sort_keys=True), steps)
  p, s = sj.sparse_init(tx, params)
  p, s = run(p, s, x, y, key)
  return sj.get_masks(s), p


def _unit(ctx, seed):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  steps, rounds = _steps(ctx), _rounds(ctx)
  n, nt = _samples(ctx)
  model, apply_fn, mse = _net()
  rng = np.random.default_rng([seed, 9])
  params = model.init(jax.random.PRNGKey(seed), np.zeros((1, IN), np.float32))["params"]
  planted = _planted(rng)
  counts = {k: int(m.sum()) for k, m in planted.items()}
  x, y, xt, yt = _data(seed, n, nt, params, planted)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 11)
  fit = shared.fit_many(mse, steps, BATCH, LR, "masks")
  found = {}
  # at initialisation
  found["magnitude_init"] = _topk_per_layer(_kernels(params), counts)
  batches = [(x[i * 512:(i + 1) * 512], y[i * 512:(i + 1) * 512]) for i in range(2)]
  loss = lambda p, b: mse(p, b[0], b[1])  # noqa: E731
  for name, kw in (("snip", {}), ("grasp", {"num_batches": 2})):
    m = sj.prune_at_init(sj.create_pruner(_cfg(name, planted, **kw)), None, params, batches, loss_fn=loss)
    found[name] = _kernels(m)
  m = sj.prune_at_init(sj.create_pruner(_cfg("synflow", planted, iterations=shared.iterations(ctx))), apply_fn,
                       params, None, input_shape=(IN,))
  found["synflow"] = _kernels(m)
  # after training: one dense run, then IMP's rounds (prune by magnitude, rewind to the initial weights)
  dense = sj.create_masks(params)
  trained = shared.unstack(fit(params, shared.stack([dense]), x, y, key), 1)[0]
  found["magnitude_trained"] = _topk_per_layer(_kernels(trained), counts)
  kept = {k: np.ones(planted[k].shape, bool) for k in planted}
  weights = trained
  for r in range(1, rounds + 1):
    target = {k: int(round(planted[k].size * (counts[k] / planted[k].size) ** (r / rounds))) for k in planted}
    target = {k: counts[k] if r == rounds else max(v, counts[k]) for k, v in target.items()}
    kept = _topk_per_layer(_kernels(weights), target, eligible=kept)
    if r < rounds:
      weights = shared.unstack(fit(params, shared.stack([_tree(params, kept)]), x, y, key), 1)[0]
  found["imp"] = kept
  schedule = {"begin_step": steps // 10, "end_step": steps * 3 // 4, "update_every": max(steps // 20, 1)}
  masks, _ = _train_sparsify(_cfg("gmp", planted, **schedule), params, x, y, key, steps)
  found["gmp"] = _kernels(masks)
  masks, _ = _train_sparsify(_cfg("rigl", planted, drop_fraction=0.3, drop_schedule="cosine", seed=seed,
                                  **{**schedule, "begin_step": 0}), params, x, y, key, steps)
  found["rigl"] = _kernels(masks)
  # every mask trained from the initial weights, with the planted and a random mask of the same counts
  random = shared.shuffle(planted, np.random.default_rng([seed, 13]))
  arms = {**found, "planted": planted, "random": random}
  names = list(arms)
  out_params = shared.unstack(fit(params, shared.stack([_tree(params, arms[k]) for k in names]), x, y, key), len(names))
  reinit = model.init(jax.random.PRNGKey(10_000 + seed), np.zeros((1, IN), np.float32))["params"]
  reinit_params = shared.unstack(fit(reinit, shared.stack([_tree(params, planted)]), x, y, key), 1)[0]
  test = jax.jit(lambda p: mse(p, xt, yt))
  out = {"counts": counts, "chance": sum(c * c / planted[k].size for k, c in counts.items()) / sum(counts.values()),
         "planted_reinit_test_mse": float(test(reinit_params)), "arms": {}}
  for k, p in zip(names, out_params):
    m = arms[k]
    hits = {layer: int(np.sum(m[layer] & planted[layer])) for layer in planted}
    summary = sj.summary(_tree(params, m), p)
    out["arms"][k] = {"recall": sum(hits.values()) / sum(counts.values()), "hits": hits,
                      "kept": {layer: int(np.sum(m[layer])) for layer in planted}, "test_mse": float(test(p)),
                      "sparsity": summary["total"]["sparsity"]}
  return out


def run(ctx) -> dict:
  out = {"steps": _steps(ctx), "rounds": _rounds(ctx), "seeds": list(ctx.seeds), "units": {}}
  for seed in ctx.seeds:
    out["units"][str(seed)] = ctx.cached(f"seed{seed}", lambda: _unit(ctx, seed))
  return out


# ------------------------------------------------------------------------------------------------------------------

def _per(results, arm, field):
  return {int(s): u["arms"][arm][field] for s, u in results["units"].items()}


def verdict(results) -> common.Verdict:
  seeds = sorted(int(s) for s in results["units"])
  recall = {p: _per(results, p, "recall") for p in PRUNERS}
  mse = {p: _per(results, p, "test_mse") for p in PRUNERS + ("planted",)}
  best = max(PRUNERS, key=lambda p: common.mean(list(recall[p].values())))
  chance = common.mean([u["chance"] for u in results["units"].values()])
  why = (f"recall of the planted mask (chance {chance:.4f}): " + ", ".join(
      f"{p} {common.mean(list(recall[p].values())):.3f}" for p in PRUNERS) + f"; best {best} per seed " +
      "/".join(f"{recall[best][s]:.3f}" for s in seeds) + "; test MSE planted " +
      "/".join(f"{mse['planted'][s]:.4f}" for s in seeds) + ", best pruner mask per seed " +
      "/".join(f"{min(mse[p][s] for p in PRUNERS):.4f}" for s in seeds))
  missed = all(recall[p][s] < MISSED for p in PRUNERS for s in seeds)
  better = all(mse["planted"][s] < mse[p][s] for p in PRUNERS for s in seeds)
  found = any(all(recall[p][s] >= FOUND for s in seeds) for p in PRUNERS)
  matched = any(all(mse[p][s] <= mse["planted"][s] for s in seeds) for p in PRUNERS)
  if missed and better:
    return common.Verdict("reproduced", why)
  if found or matched:
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def tables(results) -> str:
  seeds = sorted(int(s) for s in results["units"])
  units = results["units"]
  chance = [units[str(s)]["chance"] for s in seeds]
  rows = []
  for arm in PRUNERS + ("random", "planted"):
    rec, mse = _per(results, arm, "recall"), _per(results, arm, "test_mse")
    hits = [units[str(s)]["arms"][arm]["hits"] for s in seeds]
    layers = list(hits[0])
    per_layer = " / ".join(f"{common.mean([h[k] for h in hits]):.1f}" for k in layers)
    rows.append([arm, " / ".join(f"{rec[s]:.3f}" for s in seeds),
                 f"{common.mean(list(rec.values())) / common.mean(chance):.1f}x", per_layer,
                 " / ".join(f"{mse[s]:.4f}" for s in seeds),
                 f"{common.mean([units[str(s)]['arms'][arm]['sparsity'] for s in seeds]):.4f}"])
  counts = units[str(seeds[0])]["counts"]
  return "\n".join([
      f"Chance recall (random mask, planted per-layer counts): {' / '.join(f'{c:.4f}' for c in chance)}. Planted "
      f"weights per layer: {' / '.join(f'{k} {v}' for k, v in counts.items())}. Planted mask trained from fresh "
      "weights (not the planted ones): test MSE " +
      " / ".join(f"{units[str(s)]['planted_reinit_test_mse']:.4f}" for s in seeds) + ".", "",
      common.table(["mask", "recall per seed", "recall / chance", "planted weights kept per layer (mean)",
                    "test MSE after training, per seed", "measured sparsity"], rows)])


def plot(results, path: str) -> None:
  plt = common.pyplot()
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  seeds = sorted(int(s) for s in results["units"])
  arms = PRUNERS + ("random", "planted")
  for i, arm in enumerate(arms):
    rec, mse = _per(results, arm, "recall"), _per(results, arm, "test_mse")
    ax1.bar(i, common.mean(list(rec.values())), color="C3" if arm == "planted" else "C0")
    ax1.plot([i] * len(seeds), [rec[s] for s in seeds], "k.", ms=4)
    ax2.bar(i, common.mean(list(mse.values())), color="C3" if arm == "planted" else "C0")
    ax2.plot([i] * len(seeds), [mse[s] for s in seeds], "k.", ms=4)
  chance = common.mean([u["chance"] for u in results["units"].values()])
  ax1.axhline(chance, color="k", ls=":", lw=1, label=f"chance {chance:.4f}")
  ax1.axhline(MISSED, color="C1", ls="--", lw=1, label=f"rule: {MISSED}")
  for ax, title in ((ax1, "recall of the planted mask"), (ax2, "test MSE after training (targets have variance 1)")):
    ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)
  ax2.set_yscale("log")
  ax1.set_ylim(0, 1)
  ax1.legend(fontsize=7)
  fig.suptitle("Planted ticket (288 of 69,888 weights) in an MLP 16-256-256-1", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
