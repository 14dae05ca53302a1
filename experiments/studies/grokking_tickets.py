"""Study 8: lottery tickets accelerate grokking (Minegishi, Iwasawa & Matsuo 2024, "Grokking Tickets: Lottery
Tickets Accelerate Grokking", arXiv:2310.19470).

Modular addition a + b mod 97 with the paper's MLP (a token table shared by a and b and summed, a ReLU layer down
to `hidden`, a ReLU layer back up, an unembedding to 97 logits), full-batch AdamW with weight decay 1. The data are
the unordered pairs a <= b (the model is symmetric in a and b, so (b, a) would be a free copy of (a, b)), half of
them for training. The dense network memorises the training pairs within a hundred steps and generalises (groks)
about a thousand steps later. Its weights give the masks: the grokking ticket (global magnitude mask of the weights
at the end of the dense run, long after test accuracy reached 100%) and the memorisation ticket (the same, at the
first evaluation where train accuracy is >= 99%, test accuracy still about 0), both rewound to the initial weights and
trained again; the controls are masks found at initialisation by the library (`sj.prune_at_init`: random, SNIP,
SynFlow) at the same sparsity. Measured: steps to 95% test accuracy (capped). Then the dense network and the grokking
ticket are trained again without weight decay: the paper finds that at a suitable pruning rate the ticket still groks
while the dense network does not.

In process with the library: one `sj.sparsify(adamw, imp pruner)` optimizer, masks from `sj.tickets.next_masks`
(global magnitude) and `sj.prune_at_init`, installed by `sj.tickets.rewind` (`sj.set_masks`); a jitted `lax.scan`
over chunks of 25 steps, evaluated after each chunk; the weight decay is an injected hyperparameter, so every run
reuses one compiled chunk.

Scaled down from the paper (p = 67, token table 500 wide, hidden 48, lr 1e-3, 40% of the pairs, 50,000 full-batch
steps, pruning rate 0.4): p = 97, a token table 128 wide, lr 1e-2 (dense grokking in about 1,200 steps instead of
tens of thousands), a cap of 3,000 steps per run, 3 seeds. The settings were chosen in a pilot on seeds 10 and 11
(not the study's seeds) that measured when dense grokking happens; the pilot's tickets did not look faster than dense,
and the settings and the rule were fixed after it and before the default run.
"""
from __future__ import annotations

import functools
import os
import time

import numpy as np

from experiments.studies import common

NAME = "grokking_tickets"
TITLE = "Lottery tickets accelerate grokking"
PAPERS = ("Minegishi, Iwasawa & Matsuo 2024, \"Grokking Tickets: Lottery Tickets Accelerate Grokking\" "
          "(arXiv:2310.19470; revised as \"Bridging Lottery Ticket and Grokking: Understanding Grokking from Inner "
          "Structure of Networks\").")
CLAIM = ("First, using ''Grokking tickets'', we show that the lottery tickets drastically accelerate grokking "
         "compared to the dense networks on various configurations (MLP and Transformer, and an arithmetic and image "
         "classification tasks). [...] In further investigations, we discovered that at an appropriate pruning rate, "
         "grokking can be achieved even without weight decay. We also show that speedup does not happen when using "
         "tickets identified at the memorization solution or transition between memorization and generalization or "
         "when pruning networks at the initialization (Random pruning, Grasp, SNIP, and Synflow).\n"
         "(The abstract of arXiv:2310.19470 as listed at huggingface.co/papers/2310.19470.)")

THRESHOLD = 0.95  # test accuracy that counts as grokked
SPARSITY = 0.4    # the paper's pruning rate for its MLP: the main claim is judged here
HIGH = 0.6        # a second, higher rate for the grokking ticket (reported with weight decay, judged without)
CONTROLS = ("dense", "mem", "random", "snip", "synflow")
LABELS = {"dense": "dense", "gen": "grokking ticket", "mem": "memorisation ticket", "random": "random (PaI)",
          "snip": "SNIP (PaI)", "synflow": "SynFlow (PaI)"}
# (mask, sparsity, weight decay on): every run of a seed; ("dense", 0, True) is the run the tickets come from.
ARMS = (("dense", 0.0, True), ("gen", SPARSITY, True), ("gen", HIGH, True), ("mem", SPARSITY, True),
        ("random", SPARSITY, True), ("snip", SPARSITY, True), ("synflow", SPARSITY, True),
        ("dense", 0.0, False), ("gen", SPARSITY, False), ("gen", HIGH, False))

RULE = (f"Steps to {100 * THRESHOLD:g}% test accuracy (evaluated after every chunk of steps, 25 at the default scale; "
        "a run that never reaches it within the cap is counted at the cap, a lower bound, shown as \"> cap\"); fewer "
        "is better. Main claim, at "
        f"{100 * SPARSITY:g}% sparsity (the paper's pruning rate for its MLP): the grokking ticket against each of "
        "dense, the memorisation ticket, random, SNIP and SynFlow, by the shared rule on the steps: "
        + common.ORDERING_RULE + " The main claim is reproduced when it is reproduced against all five, not "
        "reproduced when it is not reproduced against at least one of them, inconclusive otherwise. Without weight "
        "decay: "
        f"reproduced when, at {100 * SPARSITY:g}% or at {100 * HIGH:g}% sparsity, on every seed the grokking ticket "
        "trained without weight decay reaches the threshold within the cap and the dense network trained without "
        "weight decay does not; not reproduced when at neither sparsity any seed has that; inconclusive otherwise. "
        "Overall: reproduced when both parts are, not reproduced when either is not, inconclusive otherwise. The "
        f"{100 * HIGH:g}% grokking ticket with weight decay is reported, not judged.")


def _settings(ctx) -> dict:
  return ctx.pick(
      tiny=dict(p=23, frac=0.5, d_emb=16, hidden=8, lr=1e-2, wd=1.0, every=10, cap=30, synflow_iterations=5),
      default=dict(p=97, frac=0.5, d_emb=128, hidden=48, lr=1e-2, wd=1.0, every=25, cap=3000,
                   synflow_iterations=100),
      full=dict(p=97, frac=0.5, d_emb=500, hidden=48, lr=1e-3, wd=1.0, every=100, cap=50000,
                synflow_iterations=100))


def setup(ctx) -> str:
  s = _settings(ctx)
  n = s["p"] * (s["p"] + 1) // 2
  return (f"a + b mod {s['p']} on the {n} unordered pairs a <= b, {100 * s['frac']:g}% of them (drawn per seed) for "
          f"training, the rest for test. MLP: a token table {s['p']}x{s['d_emb']} shared by a and b and summed, "
          f"ReLU layer {s['d_emb']}->{s['hidden']}, ReLU layer {s['hidden']}->{s['d_emb']}, unembedding "
          f"{s['d_emb']}->{s['p']}, no biases, every matrix pruned; N(0, 1/fan_in) init as in the paper's code. "
          f"Full-batch AdamW (lr {s['lr']:g}, betas 0.9/0.98, weight decay {s['wd']:g} or 0), evaluation every "
          f"{s['every']} steps, cap {s['cap']} steps per run. The dense run (weight decay on) trains to the cap; the "
          "memorisation ticket is the global magnitude mask of its weights at the first evaluation with train "
          "accuracy >= 99%, the grokking ticket that of its weights at the cap; both rewound to the initial weights. "
          f"PaI masks by `sj.prune_at_init` at the same {100 * SPARSITY:g}%: random (uniform per layer), SNIP "
          "(global, the whole training set as one batch) and SynFlow (global, "
          f"{s['synflow_iterations']} rounds, on the one-hot form of the same MLP). Every run stops at "
          f"{100 * THRESHOLD:g}% test accuracy. Seeds {', '.join(map(str, ctx.seeds))} (init, split, random mask). "
          "Scaled down from the paper's p = 67, 500-wide table, lr 1e-3, 50,000 steps (module docstring).")


# ---------------------------------------------------------------------------------------------------------------- data


def _data(p: int, frac: float, seed: int):
  """The unordered pairs a <= b with labels (a + b) mod p, split at random (by `seed`) into train (`frac` of them)
  and test."""
  a, b = np.triu_indices(p)
  pairs = np.stack([a, b], 1).astype(np.int32)
  labels = ((pairs[:, 0] + pairs[:, 1]) % p).astype(np.int32)
  perm = np.random.default_rng(1000 + seed).permutation(len(pairs))
  n = int(round(frac * len(pairs)))
  return (pairs[perm[:n]], labels[perm[:n]]), (pairs[perm[n:]], labels[perm[n:]])


# --------------------------------------------------------------------------------------------------------------- model


def _init(s: dict, seed: int) -> dict:
  """The paper's MLP: tok (p, d_emb) shared by a and b and summed, w1 (d_emb, hidden), w2 (hidden, d_emb), unemb
  (d_emb, p), no biases; each ~ N(0, 1/fan_in) (the token table's fan-in is p, a one-hot). Every leaf is a 2-D
  weight that the library's default rule prunes (no path part contains 'embed')."""
  import jax  # pylint: disable=g-import-not-at-top
  p, d, h = s["p"], s["d_emb"], s["hidden"]
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return {"tok": jax.random.normal(k[0], (p, d)) / np.sqrt(p), "w1": jax.random.normal(k[1], (d, h)) / np.sqrt(d),
          "w2": jax.random.normal(k[2], (h, d)) / np.sqrt(h), "unemb": jax.random.normal(k[3], (d, p)) / np.sqrt(d)}


def _logits(params, pairs):
  """The MLP on integer pairs. (tok[a] + tok[b]) @ w1 = t[a] + t[b] with t = tok @ w1: the same function, with the
  first layer computed for the p tokens instead of for every pair."""
  import jax  # pylint: disable=g-import-not-at-top
  t = params["tok"] @ params["w1"]
  h = jax.nn.relu(t[pairs[:, 0]] + t[pairs[:, 1]])
  return jax.nn.relu(h @ params["w2"]) @ params["unemb"]


def _logits_onehot(params, x):
  """The same MLP on the concatenated one-hots of a and b (N, 2p): the form SynFlow feeds its all-ones input to."""
  import jax  # pylint: disable=g-import-not-at-top
  p = params["tok"].shape[0]
  e = x[:, :p] @ params["tok"] + x[:, p:] @ params["tok"]
  return jax.nn.relu(jax.nn.relu(e @ params["w1"]) @ params["w2"]) @ params["unemb"]


def _loss(params, batch):
  import optax  # pylint: disable=g-import-not-at-top
  pairs, labels = batch
  return optax.softmax_cross_entropy_with_integer_labels(_logits(params, pairs), labels).mean()


@functools.lru_cache(maxsize=None)
def _trainer(lr: float, every: int):
  """(tx, chunk): AdamW (weight decay injected, so the same compiled chunk runs with and without it) inside
  `sj.sparsify` with the `imp` pruner (masks change only when set), and a jitted chunk of `every` full-batch steps
  followed by train and test accuracy."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  tx = sj.sparsify(optax.inject_hyperparams(optax.adamw)(learning_rate=lr, b1=0.9, b2=0.98, weight_decay=1.0),
                   sj.create_pruner({"algorithm": "imp"}))

  def accuracy(params, pairs, labels):
    return jnp.mean(jnp.argmax(_logits(params, pairs), -1) == labels)

  @jax.jit
  def chunk(params, opt_state, train, test):
    def step(carry, _):
      params, opt_state = carry
      updates, opt_state = tx.update(jax.grad(_loss)(params, train), opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), None, length=every)
    return params, opt_state, accuracy(params, *train), accuracy(params, *test)

  return tx, chunk


def _train(s: dict, params0, masks, train, test, wd: float, to_cap: bool = False) -> dict:
  """Trains from `params0` pruned to `masks` (with weight decay `wd`) until test accuracy reaches THRESHOLD, or to
  the cap when `to_cap`. Returns the curves (train and test accuracy after every chunk), steps to THRESHOLD (None:
  not within the cap), the sparsity of the final weights counted from the arrays, and (as arrays, under "params")
  the weights at the first evaluation with train accuracy >= 99% ("memorised") and at the end ("final")."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  tx, chunk = _trainer(s["lr"], s["every"])
  params, opt_state = sj.tickets.rewind(params0, tx.init(params0), masks)
  hp = sj.hyperparams(opt_state)
  hp["weight_decay"] = jnp.asarray(wd, hp["weight_decay"].dtype)
  train = tuple(jnp.asarray(x) for x in train)
  test = tuple(jnp.asarray(x) for x in test)
  out = {"train": [], "test": [], "steps_to_threshold": None, "memorised_step": None}
  kept = {}
  started = time.time()
  for i in range(s["cap"] // s["every"]):
    params, opt_state, acc_train, acc_test = chunk(params, opt_state, train, test)
    acc_train, acc_test = float(acc_train), float(acc_test)
    out["train"].append(acc_train)
    out["test"].append(acc_test)
    step = (i + 1) * s["every"]
    if out["memorised_step"] is None and acc_train >= 0.99:
      out["memorised_step"], kept["memorised"] = step, jax.device_get(params)
    if out["steps_to_threshold"] is None and acc_test >= THRESHOLD:
      out["steps_to_threshold"] = step
      if not to_cap:
        break
  kept["final"] = jax.device_get(params)
  out["steps_run"] = len(out["test"]) * s["every"]
  out["sparsity"] = float(sj.summary(sj.get_masks(opt_state), params)["total"]["sparsity"])
  out["layer_sparsity"] = {k: v["sparsity"] for k, v in sj.summary(sj.get_masks(opt_state), params)["layers"].items()}
  out["seconds"] = time.time() - started
  out["params"] = kept
  return out


# --------------------------------------------------------------------------------------------------------------- masks


def _magnitude_mask(params, sparsity: float):
  """Global magnitude mask of `sparsity` over every prunable weight of `params` (the paper's scope 'global')."""
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  return sj.tickets.next_masks(params, sj.create_masks(params), prune_fraction=sparsity, distribution="global")


def _pai_mask(algorithm: str, s: dict, params0, train, sparsity: float, seed: int):
  """A mask found at initialisation by the library: random (uniform per layer, drawn from `seed`), SNIP (global,
  the whole training set as one batch) or SynFlow (global, data-free, on the one-hot form of the MLP)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  if algorithm == "random":
    return sj.prune_at_init(sj.create_pruner({"algorithm": "random", "target": sparsity, "seed": seed}), None,
                            params0, None)
  if algorithm == "snip":
    pruner = sj.create_pruner({"algorithm": "snip", "target": sparsity, "distribution": "global"})
    return sj.prune_at_init(pruner, None, params0, [tuple(jnp.asarray(x) for x in train)], loss_fn=_loss)
  if algorithm == "synflow":
    pruner = sj.create_pruner({"algorithm": "synflow", "target": sparsity, "distribution": "global",
                               "iterations": s["synflow_iterations"]})
    return sj.prune_at_init(pruner, _logits_onehot, params0, None, input_shape=(2 * s["p"],))
  raise ValueError(f"grokking_tickets: unknown mask {algorithm!r}")


# ----------------------------------------------------------------------------------------------------------------- run


def _summary(r: dict, mask: str, sparsity: float, wd: bool, seed: int) -> dict:
  return {"mask": mask, "target": sparsity, "wd": wd, "seed": seed, "steps": r["steps_to_threshold"],
          "steps_run": r["steps_run"], "sparsity": r["sparsity"], "layer_sparsity": r["layer_sparsity"],
          "final_test": r["test"][-1], "final_train": r["train"][-1], "test_curve": r["test"],
          "seconds": r["seconds"]}


def _dense(ctx, s: dict, seed: int) -> dict:
  """The dense run with weight decay, to the cap; its weights at memorisation and at the cap are kept in
  dense_seed<s>.npz (written before the JSON) for the tickets."""
  npz = ctx.path(f"dense_seed{seed}.npz")

  def fn():
    import sparsejax as sj  # pylint: disable=g-import-not-at-top
    train, test = _data(s["p"], s["frac"], seed)
    params0 = _init(s, seed)
    r = _train(s, params0, sj.create_masks(params0), train, test, s["wd"], to_cap=True)
    if "memorised" not in r["params"]:  # never memorised within the cap: the mask of the final weights stands in
      r["params"]["memorised"] = r["params"]["final"]
    arrays = {f"{when}/{k}": np.asarray(v) for when, tree in r["params"].items() for k, v in tree.items()}
    np.savez(npz + ".tmp.npz", **arrays)
    os.replace(npz + ".tmp.npz", npz)
    out = _summary(r, "dense", 0.0, True, seed)
    i = (r["memorised_step"] or r["steps_run"]) // s["every"] - 1
    out.update(memorised_step=r["memorised_step"], memorised_test=r["test"][i], memorised_train=r["train"][i])
    return out

  return ctx.cached(f"dense_wd_seed{seed}", fn)


def _weights(ctx, seed: int, when: str) -> dict:
  npz = ctx.path(f"dense_seed{seed}.npz")
  if not os.path.exists(npz):
    raise FileNotFoundError(f"{npz}: the dense run's weights are missing; remove dense_wd_seed{seed}.json to rerun it")
  with np.load(npz) as f:
    return {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(when + "/")}


def _arm(ctx, s: dict, seed: int, mask: str, sparsity: float, wd: bool) -> dict:
  def fn():
    import sparsejax as sj  # pylint: disable=g-import-not-at-top
    train, test = _data(s["p"], s["frac"], seed)
    params0 = _init(s, seed)
    if mask == "dense":
      masks = sj.create_masks(params0)
    elif mask in ("gen", "mem"):
      masks = _magnitude_mask(_weights(ctx, seed, "final" if mask == "gen" else "memorised"), sparsity)
    else:
      masks = _pai_mask(mask, s, params0, train, sparsity, seed)
    r = _train(s, params0, masks, train, test, s["wd"] if wd else 0.0)
    return _summary(r, mask, sparsity, wd, seed)

  return ctx.cached(f"{mask}_k{sparsity:g}_{'wd' if wd else 'nowd'}_seed{seed}", fn)


def run(ctx) -> dict:
  s = _settings(ctx)
  runs = []
  for seed in ctx.seeds:
    dense = _dense(ctx, s, seed)
    runs.append(dense)
    for mask, sparsity, wd in ARMS:
      if (mask, wd) != ("dense", True):
        runs.append(_arm(ctx, s, seed, mask, sparsity, wd))
  return {"settings": s, "seeds": list(ctx.seeds), "runs": runs}


# ------------------------------------------------------------------------------------------------------------- verdict


def _runs(results, mask, sparsity, wd) -> dict:
  return {r["seed"]: r for r in results["runs"] if r["mask"] == mask and r["target"] == sparsity and r["wd"] == wd}


def _steps(results, mask, sparsity, wd) -> dict:
  """{seed: steps to THRESHOLD}, a run that never reached it counted at the cap."""
  cap = results["settings"]["cap"]
  return {seed: cap if r["steps"] is None else r["steps"] for seed, r in _runs(results, mask, sparsity, wd).items()}


def _main_parts(results) -> list:
  gen = {seed: -v for seed, v in _steps(results, "gen", SPARSITY, True).items()}
  parts = []
  for c in CONTROLS:
    other = {seed: -v for seed, v in _steps(results, c, 0.0 if c == "dense" else SPARSITY, True).items()}
    parts.append(common.ordering(gen, other, f"grokking ticket vs {LABELS[c]}", unit=1.0, suffix=" steps"))
  return parts


def _nowd(results) -> common.Verdict:
  dense = _runs(results, "dense", 0.0, False)
  per, notes = {}, []
  for k in (SPARSITY, HIGH):
    ticket = _runs(results, "gen", k, False)
    seeds = sorted(set(dense) & set(ticket))
    per[k] = [ticket[s]["steps"] is not None and dense[s]["steps"] is None for s in seeds]
    notes.append(f"{100 * k:g}%: " + ", ".join(
        f"seed {s}: ticket {_fmt(ticket[s]['steps'], results)}, dense {_fmt(dense[s]['steps'], results)}"
        for s in seeds))
  why = "; ".join(notes)
  if any(v and all(v) for v in per.values()):
    return common.Verdict("reproduced", why)
  if not any(any(v) for v in per.values()):
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def verdict(results) -> common.Verdict:
  main = common.combine(_main_parts(results))
  nowd = _nowd(results)
  both = common.combine([main, nowd])
  return common.Verdict(both.verdict, f"main claim {main.verdict} ({main.why}); without weight decay {nowd.verdict} "
                                      f"(steps to 95% at {nowd.why})")


# ------------------------------------------------------------------------------------------------------------- report


def _fmt(steps, results) -> str:
  return f"> {results['settings']['cap']}" if steps is None else str(steps)


def tables(results) -> str:
  seeds = results["seeds"]
  rows = []
  for mask, sparsity, wd in ARMS:
    runs = _runs(results, mask, sparsity, wd)
    measured = sorted({round(r["sparsity"], 4) for r in runs.values()})
    steps = _steps(results, mask, sparsity, wd)
    rows.append([LABELS[mask], "on" if wd else "off", f"{100 * sparsity:g}%", ", ".join(f"{m:.4f}" for m in measured),
                 " / ".join(_fmt(runs[s]["steps"], results) for s in seeds if s in runs),
                 f"{common.mean(list(steps.values())):.0f}" if steps else "",
                 " / ".join(common.pct(runs[s]["final_test"]) for s in seeds if s in runs)])
  main = common.table(["mask", "weight decay", "target", "measured sparsity", "steps to 95% test (per seed)",
                       "mean (cap counted)", "test acc % at stop"], rows)
  dense = _runs(results, "dense", 0.0, True)
  ref = common.table(
      ["seed", "memorised at step (train >= 99%)", "test acc % then", "grokking ticket taken at step",
       "test acc % then"],
      [[s, _fmt(dense[s]["memorised_step"], results), common.pct(dense[s]["memorised_test"]), dense[s]["steps_run"],
        common.pct(dense[s]["final_test"])] for s in seeds if s in dense])
  parts = common.table(["claim", "verdict", "reason"],
                       [[p.why.split(":")[0], p.verdict, p.why.split(": ", 1)[1]] for p in _main_parts(results)]
                       + [["without weight decay: ticket reaches 95%, dense does not", _nowd(results).verdict,
                           "steps to 95% without weight decay at " + _nowd(results).why]])
  return "\n\n".join([main, "Where the tickets come from (the dense run with weight decay):", ref,
                      "Sub-claims:", parts])


def plot(results, path: str) -> None:
  plt = common.pyplot()
  every = results["settings"]["every"]
  seed = results["seeds"][0]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, wd in zip(axes, (True, False)):
    for i, (mask, sparsity, w) in enumerate(ARMS):
      r = _runs(results, mask, sparsity, w).get(seed)
      if w != wd or r is None:
        continue
      xs = [every * (j + 1) for j in range(len(r["test_curve"]))]
      label = LABELS[mask] + ("" if mask == "dense" else f" {100 * sparsity:g}%")
      ax.plot(xs, [100 * a for a in r["test_curve"]], color=f"C{i}", label=label,
              lw=2.2 if mask == "gen" else 1.2)
    ax.axhline(100 * THRESHOLD, color="gray", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_title(f"weight decay {'on' if wd else 'off'} (seed {seed})", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("test accuracy %")
  fig.suptitle(f"Grokking tickets: a + b mod {results['settings']['p']}, test accuracy until {100 * THRESHOLD:g}% "
               "or the cap", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
