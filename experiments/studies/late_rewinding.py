"""Study 5: late rewinding rescues IMP where rewinding to step 0 fails, and the stability probe that explains it.

Frankle, Dziugaite, Roy & Carbin 2019 ("Stabilizing the Lottery Ticket Hypothesis") find that where iterative
magnitude pruning (IMP) with rewinding to initialisation finds no better subnetwork than random reinitialisation,
rewinding the survivors to their values at an early step k (0.1% to 7% of training) instead does; Frankle et al. 2020
("Linear Mode Connectivity and the Lottery Ticket Hypothesis") explain it by stability to SGD noise: two copies of the
subnetwork trained from the rewind point with different data orders end in one linearly connected region (a small
error barrier on the line between them) from step k, not from step 0.

Here: LeNet-300-100 on Fashion-MNIST at a large Adam learning rate with cosine decay (study 4 `lth_vs_reinit`'s
largest; chosen, on one pilot seed, as a setting where tickets rewound to step 0 do no better than random
reinitialisation; that precondition is measured again here and is part of the rule), with the engine's IMP
(`configs/fashion_mnist_lenet300.py:method=imp`): per-layer magnitude pruning, 36% of each hidden layer's remaining
weights and 19% of the output layer's per level. Arms: rewind to step 0 with the
`random_reinit` control, and rewind to step k (`config.sparsity.rewind = "step"`: weights, optimizer state and data
order of step k of the dense run). Stability probe at the last level: the engine's ticket is one copy; a second copy
of the same subnetwork is trained in process from the same rewind point (the engine's step-0 state or its step-k
snapshot checkpoint) with a different data order, and the test error is evaluated at 11 points on the line between
the two final weights. Scaled down from the papers (ResNets and VGGs on CIFAR-10 and ImageNet with SGD; many more
steps and levels, SGD with step decay): an MLP at a high Adam learning rate with cosine decay, 2,000 steps per
level, five levels (89% sparsity), one rewind step (k = 5% of training), the probe at the last level only.
"""
from __future__ import annotations

import os

from experiments.studies import common, lth_vs_reinit

NAME = "late_rewinding"
TITLE = "Late rewinding rescues IMP where rewinding to step 0 fails; the error barrier explains why"
PAPERS = ("Frankle, Dziugaite, Roy & Carbin 2019, \"Stabilizing the Lottery Ticket Hypothesis\" (also \"The Lottery "
          "Ticket Hypothesis at Scale\"); Frankle, Dziugaite, Roy & Carbin 2020, \"Linear Mode Connectivity and the "
          "Lottery Ticket Hypothesis\" (ICML).")
CLAIM = ("Frankle et al. 2019 (abstract): \"We modify IMP to search for subnetworks that could have been obtained by "
         "pruning early in training (0.1% to 7% through) rather than at iteration 0. [...] In situations where IMP "
         "fails at iteration 0, the accuracy benefits of delaying pruning accrue rapidly over the earliest iterations "
         "of training.\"\n"
         "Frankle et al. 2020 (abstract): \"We find that these subnetworks only reach full accuracy when they are "
         "stable to SGD noise, which either occurs at initialization for small-scale settings (MNIST) or early in "
         "training for large-scale settings (ResNet-50 and Inception-v3 on ImageNet).\"")
SPARSE_DENSITY = 0.3  # the levels the accuracy comparison reads: at most this fraction of the weights left (counted)
STABLE = 0.02  # error barrier under which Frankle et al. 2020 call a network stable to SGD noise (2 points)
RULE = ("Accuracy: the value of an arm on a seed is its final test accuracy averaged over the IMP levels with at most "
        f"{100 * SPARSE_DENSITY:g}% of the weights left (counted from the arrays). Barrier: at the last level, the "
        "maximum over 11 evenly spaced points of the line between the two copies' final weights of the test error, "
        "minus the mean of the two endpoints' test errors. Each comparison uses the shared rule: " +
        common.ORDERING_RULE + " Precondition (the setting is one where IMP at step 0 fails): tickets rewound to step "
        "0 against random reinit is not reproduced (not reproduced or inconclusive); when it is reproduced the "
        "verdict is **inconclusive** whatever the rest. (A) late-rewound tickets (claimed better) against tickets "
        "rewound to step 0. (B) the barrier from step k (claimed smaller, compared negated) against the barrier from "
        f"step 0, and, as the claim says small and large, the mean barrier from k under {100 * STABLE:g} points and "
        f"the mean barrier from 0 at least {100 * STABLE:g} points (the threshold under which Frankle et al. 2020 "
        "call a network stable); B is reproduced when the comparison is reproduced and both thresholds hold, not "
        "reproduced when the comparison is not reproduced or a threshold fails, inconclusive otherwise. Overall, "
        "given the precondition: **reproduced** when A and B are; **not reproduced** when either is not; "
        "**inconclusive** otherwise.")

LR = 2e-2
PRUNE_HIDDEN, PRUNE_HEAD = lth_vs_reinit.PRUNE_HIDDEN, lth_vs_reinit.PRUNE_HEAD
PROBE_DATA_SEED = 1000  # the second copy's data order: seed PROBE_DATA_SEED + seed (the engine's copy uses seed)


def _levels(ctx):
  return ctx.pick(1, 5)


def _steps(ctx):
  return ctx.pick(30, 2000, 10000)


def _rewind_step(ctx):
  """k: 5% of training (inside the papers' 0.1%-7%)."""
  return max(_steps(ctx) // 20, 1)


def setup(ctx) -> str:
  steps, k = _steps(ctx), _rewind_step(ctx)
  return (f"LeNet-300-100 on Fashion-MNIST, Adam at learning rate {LR:g} with cosine decay to 0 (study 4's largest), "
          "batch 60, "
          f"{steps} steps per level; IMP with {_levels(ctx)} pruning levels after the dense level 0, each removing "
          f"{100 * PRUNE_HIDDEN:g}% of the remaining weights of each hidden layer and {100 * PRUNE_HEAD:g}% of the "
          f"output layer's by magnitude. Arms: rewind to step 0 (with the random-reinit control at every level) and "
          f"rewind to step k = {k} ({100 * k / steps:g}% of training; weights, Adam state and data order of step k). "
          "Stability probe at the last level: the engine's ticket and a second copy trained from the same rewind "
          f"point with another data order (seed {PROBE_DATA_SEED} + seed); test error at 11 points on the line "
          f"between them. Seeds {', '.join(map(str, ctx.seeds))} (init, data order, control init). Final test "
          "accuracy of each level.")


def _config(rewind: str, levels: int, seed: int, steps: int, k: int):
  """Study 4's IMP config at LR; rewound to step k (no control) instead of step 0 when rewind == "step"."""
  config = lth_vs_reinit._config(LR, levels, seed, steps)
  if rewind != "init":
    s = config.sparsity
    s.rewind, s.rewind_step, s.control = "step", k, "none"
  return config


def probe(config, run_dir: str, level: int, k: int, data_seed: int, points: int = 11) -> dict:
  """The stability probe of one engine IMP run: its ticket at `level` (copy a) and a second copy of the same
  subnetwork trained in process from the same rewind point (step 0, or the engine's step-k snapshot) with the data
  order of `data_seed` (copy b); the test error at `points` evenly spaced points of the line from a to b.

  Returns {"alphas", "errors", "barrier", "distance"}: barrier = max(errors) - (errors[0] + errors[-1]) / 2; distance
  = the L2 distance between the two copies' weights.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  from sparsejax import checkpoint, lottery  # pylint: disable=g-import-not-at-top
  from sparsejax import train as train_lib  # pylint: disable=g-import-not-at-top
  from sparsejax.data import create_dataset  # pylint: disable=g-import-not-at-top

  s = train_lib.build(config)
  t = s.config.training
  fresh = train_lib.create_train_state(s.config, s.model, s.dataset, jax.random.PRNGKey(s.config.seed), s.tx, s.mesh)
  target = checkpoint.abstract_like(fresh)

  def restore(directory, step=None):
    manager = checkpoint.create_manager(directory, 1)
    state = checkpoint.restore_latest(manager, target)[1] if step is None else checkpoint.restore(manager, step, target)
    manager.close()
    return state

  # The layout of sparsejax.lottery's workdir: levels/<level>_ticket (final state) and levels/rewind (step k).
  a = restore(os.path.join(run_dir, "levels", f"{level:02d}_ticket"))
  masks = jax.device_get(sj.get_masks(a.opt_state))  # a host copy: training donates the arrays it is given
  start = fresh if k == 0 else restore(os.path.join(run_dir, "levels", "rewind"), k)
  state = lottery.with_masks(start, jax.tree.map(jnp.asarray, masks))
  other = create_dataset(s.config.data, seed=data_seed)
  step_fn = train_lib.make_train_step(s.model, s.tx, s.mesh, t.label_smoothing)
  b = train_lib.train_loop(state, step_fn, other, t.batch_size, s.mesh, k, s.num_steps)
  eval_fn = train_lib.make_eval_step(s.model, s.mesh)
  alphas = [i / (points - 1) for i in range(points)]
  errors = []
  for alpha in alphas:
    params = jax.tree.map(lambda x, y, al=alpha: (1.0 - al) * x + al * y, a.params, b.params)
    test = train_lib.evaluate(eval_fn, a.replace(params=params), s.dataset, "test", t.eval_batch_size, s.mesh)
    errors.append(1.0 - float(test["accuracy"]))
  sq = sum(float(jnp.sum((x - y) ** 2)) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
  kept = sum(int(np.sum(np.asarray(m))) for m in jax.tree.leaves(masks))
  return {"alphas": alphas, "errors": errors, "barrier": max(errors) - (errors[0] + errors[-1]) / 2,
          "distance": float(np.sqrt(sq)), "kept": kept}


def run(ctx) -> dict:
  steps, levels, k = _steps(ctx), _levels(ctx), _rewind_step(ctx)
  out = {"steps": steps, "levels": levels, "k": k, "lr": LR, "seeds": list(ctx.seeds), "runs": [], "probes": []}
  for seed in ctx.seeds:
    for rewind, step in (("init", 0), ("step", k)):
      name = f"imp_{'0' if step == 0 else f'k{k}'}_seed{seed}"
      config = _config(rewind, levels, seed, steps, k)
      r = ctx.engine(name, config)
      for lv in r["levels"]:
        row = {"rewind": step, "seed": seed, "level": lv["level"], "sparsity": lv["sparsity"],
               "ticket": lv["test_accuracy"]}
        if "random_reinit" in lv["controls"]:
          row["reinit"] = lv["controls"]["random_reinit"]["test_accuracy"]
        out["runs"].append(row)
      p = ctx.cached(f"probe_{name}", lambda c=config, n=name, st=step, sd=seed: probe(
          c, ctx.path(n), levels, st, PROBE_DATA_SEED + sd))
      out["probes"].append({"rewind": step, "seed": seed, "level": levels, **p})
  return out


def _sparse(results, rewind):
  return [r for r in results["runs"]
          if r["rewind"] == rewind and r["level"] > 0 and 1.0 - r["sparsity"] <= SPARSE_DENSITY]


def _arm(results, rewind, arm):
  by_seed = {}
  for r in _sparse(results, rewind):
    by_seed.setdefault(r["seed"], []).append(r[arm])
  return {s: common.mean(v) for s, v in by_seed.items()}


def _barrier(results, rewind):
  return {p["seed"]: p["barrier"] for p in results["probes"] if p["rewind"] == rewind}


def _parts(results):
  k = results["k"]
  if not _sparse(results, 0):
    none = common.Verdict("inconclusive", f"no level with at most {100 * SPARSE_DENSITY:g}% of the weights left")
    return none, none, none
  pre = common.ordering(_arm(results, 0, "ticket"), _arm(results, 0, "reinit"),
                        "precondition, tickets rewound to step 0 vs random reinit")
  a = common.ordering(_arm(results, k, "ticket"), _arm(results, 0, "ticket"),
                      f"(A) tickets rewound to step {k} vs to step 0")
  b0, bk = _barrier(results, 0), _barrier(results, k)
  cmp = common.ordering({s: -v for s, v in bk.items()}, {s: -v for s, v in b0.items()},
                        f"(B) error barrier from step {k} vs from step 0 (lower is better)")
  m0, mk = common.mean(list(b0.values())), common.mean(list(bk.values()))
  ok = mk < STABLE <= m0
  thresholds = common.Verdict("reproduced" if ok else "not reproduced",
                              f"mean barrier from step {k} {100 * mk:.2f} points "
                              f"({'<' if mk < STABLE else '>='} {100 * STABLE:g}), from step 0 {100 * m0:.2f} points "
                              f"({'>=' if m0 >= STABLE else '<'} {100 * STABLE:g})")
  return pre, a, common.combine([cmp, thresholds])


def verdict(results) -> common.Verdict:
  pre, a, b = _parts(results)
  why = f"{pre.why} -> {pre.verdict}; {a.why} -> {a.verdict}; {b.why} -> {b.verdict}"
  if pre.verdict == "reproduced":
    return common.Verdict("inconclusive", why + "; the precondition fails: here tickets rewound to step 0 already "
                                                "beat random reinit")
  both = common.combine([a, b])
  return common.Verdict(both.verdict, why)


def tables(results) -> str:
  k = results["k"]
  pre, a, b = _parts(results)
  t0, tk, re = _arm(results, 0, "ticket"), _arm(results, k, "ticket"), _arm(results, 0, "reinit")
  b0, bk = _barrier(results, 0), _barrier(results, k)

  def cells(d, unit=100.0):
    return " / ".join(f"{unit * d[s]:.2f}" for s in sorted(d))

  def m(d):
    return f"{100 * common.mean(list(d.values())):.2f}" if d else ""

  summary = common.table(
      ["quantity", "per seed", "mean", "comparison", "verdict"],
      [[f"random reinit, test acc % (mean over levels <= {100 * SPARSE_DENSITY:g}% left)", cells(re), m(re), "", ""],
       ["tickets rewound to step 0, test acc %", cells(t0), m(t0), "precondition: vs reinit", pre.verdict],
       [f"tickets rewound to step {k}, test acc %", cells(tk), m(tk), "(A): vs step 0", a.verdict],
       ["error barrier from step 0 (points, last level)", cells(b0), m(b0), "", ""],
       [f"error barrier from step {k} (points, last level)", cells(bk), m(bk), "(B): smaller, under 2 points",
        b.verdict]])
  rows = []
  for level in range(results["levels"] + 1):
    rs = [r for r in results["runs"] if r["level"] == level]
    if not rs:
      continue
    z = [r for r in rs if r["rewind"] == 0]
    late = [r for r in rs if r["rewind"] == k]
    reinit = [r["reinit"] for r in z if "reinit" in r]
    left = sorted({round(100 * (1 - r["sparsity"]), 2) for r in rs})
    rows.append([level, ", ".join(f"{x:g}" for x in left), common.pct(common.mean([r["ticket"] for r in z])),
                 common.pct(common.mean([r["ticket"] for r in late])),
                 common.pct(common.mean(reinit)) if reinit else "(dense)"])
  per_level = common.table(["level", "% of weights left (measured)", "ticket, rewind 0: test acc % (mean of seeds)",
                            f"ticket, rewind {k}", "random reinit"], rows)
  line = []
  for rewind in (0, k):
    ps = [p for p in results["probes"] if p["rewind"] == rewind]
    if ps:
      errs = [common.mean([p["errors"][i] for p in ps]) for i in range(len(ps[0]["alphas"]))]
      line.append([f"from step {rewind}", ", ".join(sorted({str(p["kept"]) for p in ps})),
                   " ".join(f"{100 * e:.1f}" for e in errs), f"{common.mean([p['distance'] for p in ps]):.2f}"])
  probe_table = common.table(["rewind point", "weights kept (counted from the masks)",
                              "test error % along the line a -> b (11 points, mean of seeds)", "L2 distance a-b"], line)
  return summary + "\n\nPer level:\n\n" + per_level + "\n\nStability probe (last level):\n\n" + probe_table


def plot(results, path: str) -> None:
  plt = common.pyplot()
  k = results["k"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
  zero = [r for r in results["runs"] if r["rewind"] == 0]
  late = [r for r in results["runs"] if r["rewind"] == k]
  for label, color, rows, arm in (("ticket, rewind to 0", "C0", zero, "ticket"),
                                  (f"ticket, rewind to step {k}", "C2", late, "ticket"),
                                  ("random reinit", "C3", zero, "reinit")):
    xs, ys = [], []
    for level in sorted({r["level"] for r in rows}):
      rs = [r for r in rows if r["level"] == level and arm in r]
      if rs:
        xs.append(100 * common.mean([1 - r["sparsity"] for r in rs]))
        ys.append(100 * common.mean([r[arm] for r in rs]))
        ax.plot([xs[-1]] * len(rs), [100 * r[arm] for r in rs], ".", color=color, alpha=0.4)
    ax.plot(xs, ys, "-o", color=color, markersize=3, label=label)
  levels = sorted({r["level"] for r in zero})
  lth_vs_reinit._percent_axis(ax, [100 * common.mean([1 - r["sparsity"] for r in zero if r["level"] == lv])
                                   for lv in levels])
  ax.set_xlabel("% of weights left")
  ax.set_ylabel("final test accuracy %")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"IMP at Adam lr {results['lr']:g}, LeNet-300-100, Fashion-MNIST", fontsize=9)
  for rewind, color in ((0, "C0"), (k, "C2")):
    for p in (p for p in results["probes"] if p["rewind"] == rewind):
      bx.plot(p["alphas"], [100 * e for e in p["errors"]], "-", color=color, alpha=0.6,
              label=f"from step {rewind}" if p["seed"] == results["seeds"][0] else None)
  bx.set_xlabel("interpolation alpha (copy a -> copy b)")
  bx.set_ylabel("test error %")
  bx.set_title("Stability probe at the last level (one line per seed)", fontsize=9)
  bx.grid(True, alpha=0.3)
  bx.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
