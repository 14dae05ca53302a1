"""Study 4: lottery tickets against random reinitialisation, at several learning rates.

Frankle & Carbin 2019 ("The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks") find that the
subnetworks iterative magnitude pruning (IMP) uncovers, rewound to their initial weights, train better than the same
subnetworks randomly reinitialised. Liu et al. 2019 ("Rethinking the Value of Network Pruning") find that at the
optimal (larger) learning rate the original initialisation brings no improvement over a random one; later work
(e.g. Frankle et al. 2019/2020) reads both as one picture: tickets beat reinit at small learning rates only.

Here: LeNet-300-100 on Fashion-MNIST with the engine's IMP (`configs/fashion_mnist_lenet300.py:method=imp`: Adam,
batch 60, per-layer magnitude pruning, survivors rewound to step 0, the `random_reinit` control at every level), run
at several Adam learning rates around the paper's 1.2e-3, three seeds each. Scaled down from the paper (MNIST, 50,000
iterations per level, 20% of the hidden layers and 10% of the output layer per level, up to 20+ levels): Fashion-MNIST,
2,000 steps per level (2 epochs), four levels of two of the paper's levels each (36% of each hidden layer's remaining
weights, 19% of the output layer's: 1 - 0.8^2 and 1 - 0.9^2; level L here is the paper's level 2L, 16.9% of the
weights left at level 4). One change of protocol: the learning rate decays to 0 with a cosine (Liu et al. decay theirs
in steps; Frankle & Carbin keep LeNet's constant), so the final accuracy at a large learning rate is that of a settled
network, not a snapshot of a noisy one.
"""
from __future__ import annotations

from experiments.studies import common

NAME = "lth_vs_reinit"
TITLE = "Lottery tickets beat random reinitialisation at small learning rates, not at large ones"
PAPERS = ("Frankle & Carbin 2019, \"The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks\"; "
          "Liu, Sun, Zhou, Huang & Darrell 2019, \"Rethinking the Value of Network Pruning\".")
CLAIM = ("Frankle & Carbin 2019 (abstract): \"The winning tickets we find have won the initialization lottery: their "
         "connections have initial weights that make training particularly effective.\"\n"
         "Liu et al. 2019 (abstract): \"We also compare with the \"Lottery Ticket Hypothesis\" (Frankle & Carbin, "
         "2019), and find that with optimal learning rate, the \"winning ticket\" initialization as used in Frankle & "
         "Carbin (2019) does not bring improvement over random initialization.\"\n"
         "(paraphrased) The reconciliation tested here: the ticket's advantage over the same mask randomly "
         "reinitialised is a small-learning-rate effect; it is there at a small learning rate and gone at a large "
         "one.")
SPARSE_DENSITY = 0.3  # the levels the verdict reads: at most this fraction of the weights left (counted)
RULE = ("For each learning rate, the value of an arm on a seed is its final test accuracy averaged over the IMP levels "
        f"with at most {100 * SPARSE_DENSITY:g}% of the weights left (counted from the arrays); tickets (claimed "
        "better) against random reinit: " + common.ORDERING_RULE + " A learning rate where this is reproduced is one "
        "where Frankle & Carbin's claim holds; one where it is not reproduced or inconclusive is one where Liu et "
        "al.'s (no improvement over random initialisation) holds. Overall: **reproduced** when the tickets' advantage "
        "is reproduced at the smallest learning rate and not reproduced or inconclusive at the largest; **not "
        "reproduced** when it is not reproduced at the smallest (tickets no better on every seed), or reproduced at "
        "the largest (tickets win at the large learning rate too); **inconclusive** otherwise. The learning rate "
        "with the best dense (level 0) accuracy is reported as the 'optimal learning rate' of Liu et al., outside "
        "the verdict.")


def _lrs(ctx):
  return ctx.pick((1.2e-3,), (3e-4, 1.2e-3, 5e-3, 2e-2))


def _levels(ctx):
  return ctx.pick(1, 4, 8)


def _steps(ctx):
  return ctx.pick(30, 2000, 10000)


PRUNE_HIDDEN, PRUNE_HEAD = 0.36, 0.19


def setup(ctx) -> str:
  lrs = ", ".join(f"{lr:g}" for lr in _lrs(ctx))
  return (f"LeNet-300-100 on Fashion-MNIST, Adam at learning rates {lrs} (cosine decay to 0), batch 60, "
          f"{_steps(ctx)} steps per level (the paper: 50,000 on MNIST); IMP with {_levels(ctx)} pruning levels after "
          f"the dense level 0, each removing {100 * PRUNE_HIDDEN:g}% of the remaining weights of each hidden layer and "
          f"{100 * PRUNE_HEAD:g}% of the output layer's by magnitude (two of the paper's 20%/10% levels per level), "
          "survivors rewound to their step-0 values with a fresh optimizer; the control trains the same masks from "
          "a fresh random init (another seed) at every level. Seeds "
          f"{', '.join(map(str, ctx.seeds))} (init, data order, control init). Final test accuracy of each level.")


def _config(lr: float, levels: int, seed: int, steps: int):
  from configs import fashion_mnist_lenet300  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_lenet300.get_config("method=imp")
  config.training.learning_rate = lr
  config.training.lr_schedule = "cosine"
  s = config.sparsity
  s.levels = levels
  s.prune_fraction = PRUNE_HIDDEN
  s.prune_fraction_overrides = {"^head/": PRUNE_HEAD}
  s.rewind, s.control = "init", "random_reinit"
  config = common.quiet(config, steps, seed)
  config.training.checkpoint_every = 0  # each level's run: one checkpoint, at its end (the next level reads it)
  return config


def run(ctx) -> dict:
  steps, levels = _steps(ctx), _levels(ctx)
  out = {"steps": steps, "levels": levels, "lrs": list(_lrs(ctx)), "seeds": list(ctx.seeds), "runs": []}
  for lr in _lrs(ctx):
    for seed in ctx.seeds:
      r = ctx.engine(f"imp_lr{lr:g}_seed{seed}", _config(lr, levels, seed, steps))
      for lv in r["levels"]:
        row = {"lr": lr, "seed": seed, "level": lv["level"], "sparsity": lv["sparsity"],
               "ticket": lv["test_accuracy"]}
        if "random_reinit" in lv["controls"]:
          row["reinit"] = lv["controls"]["random_reinit"]["test_accuracy"]
          row["reinit_sparsity"] = lv["controls"]["random_reinit"]["sparsity"]
        out["runs"].append(row)
  return out


def _sparse_rows(results, lr):
  return [r for r in results["runs"] if r["lr"] == lr and r["level"] > 0 and 1.0 - r["sparsity"] <= SPARSE_DENSITY]


def _arm(results, lr, arm):
  """{seed: mean over the sparse levels of `arm`'s final test accuracy}."""
  by_seed = {}
  for r in _sparse_rows(results, lr):
    by_seed.setdefault(r["seed"], []).append(r[arm])
  return {s: common.mean(v) for s, v in by_seed.items()}


def _per_lr(results):
  out = {}
  for lr in results["lrs"]:
    if not _sparse_rows(results, lr):
      out[lr] = common.Verdict("inconclusive", f"lr {lr:g}: no level with at most {100 * SPARSE_DENSITY:g}% of the "
                                               "weights left")
    else:
      out[lr] = common.ordering(_arm(results, lr, "ticket"), _arm(results, lr, "reinit"), f"lr {lr:g}")
  return out


def _dense(results, lr):
  return {r["seed"]: r["ticket"] for r in results["runs"] if r["lr"] == lr and r["level"] == 0}


def _optimal_lr(results):
  return max(results["lrs"], key=lambda lr: common.mean(list(_dense(results, lr).values())))


def _holds(v: common.Verdict) -> str:
  return "Frankle & Carbin (tickets win)" if v.verdict == "reproduced" else "Liu et al. (no ticket advantage)"


def verdict(results) -> common.Verdict:
  per = _per_lr(results)
  lrs = sorted(results["lrs"])
  small, large = per[lrs[0]], per[lrs[-1]]
  opt = _optimal_lr(results)
  why = ("; ".join(f"{v.why} -> {v.verdict}: {_holds(v)} holds" for v in (per[lr] for lr in lrs)) +
         f"; best dense accuracy (Liu et al.'s optimal learning rate) at lr {opt:g}, where {_holds(per[opt])} holds")
  if len(lrs) < 2:
    return common.Verdict("inconclusive", why + "; one learning rate only")
  if small.verdict == "reproduced" and large.verdict != "reproduced":
    return common.Verdict("reproduced", why)
  if small.verdict == "not reproduced" or large.verdict == "reproduced":
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def tables(results) -> str:
  per = _per_lr(results)
  opt = _optimal_lr(results)
  rows = []
  for lr in sorted(results["lrs"]):
    t, r = _arm(results, lr, "ticket"), _arm(results, lr, "reinit")
    dense = _dense(results, lr)
    seeds = sorted(t)
    gap = f"{100 * (common.mean(list(t.values())) - common.mean(list(r.values()))):+.2f}" if seeds else ""
    rows.append([f"{lr:g}" + (" (best dense)" if lr == opt else ""),
                 " / ".join(common.pct(dense[s]) for s in sorted(dense)),
                 " / ".join(common.pct(t[s]) for s in seeds), " / ".join(common.pct(r[s]) for s in seeds), gap,
                 per[lr].verdict, _holds(per[lr])])
  summary = common.table(["Adam lr", "dense test acc % (per seed)",
                          f"tickets, mean over levels <= {100 * SPARSE_DENSITY:g}% left", "random reinit, same levels",
                          "mean gap (points)", "tickets beat reinit", "claim that holds"], rows)
  level_rows = []
  for lr in sorted(results["lrs"]):
    for level in range(results["levels"] + 1):
      rs = [r for r in results["runs"] if r["lr"] == lr and r["level"] == level]
      if not rs:
        continue
      left = sorted({round(100 * (1 - r["sparsity"]), 2) for r in rs})
      tick = common.mean([r["ticket"] for r in rs])
      re = [r["reinit"] for r in rs if "reinit" in r]
      level_rows.append([f"{lr:g}", level, ", ".join(f"{x:g}" for x in left), common.pct(tick),
                         common.pct(common.mean(re)) if re else "(dense)",
                         f"{100 * (tick - common.mean(re)):+.2f}" if re else ""])
  per_level = common.table(["Adam lr", "level", "% of weights left (measured)", "ticket test acc % (mean of seeds)",
                            "random reinit", "gap (points)"], level_rows)
  return summary + "\n\nPer level:\n\n" + per_level


def _percent_axis(ax, ticks) -> None:
  """A log x axis of % of weights left, densest on the left, labelled at `ticks`."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.set_xscale("log")
  ax.set_xticks(ticks)
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:.3g}"))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.invert_xaxis()


def plot(results, path: str) -> None:
  plt = common.pyplot()
  lrs = sorted(results["lrs"])
  fig, axes = plt.subplots(1, len(lrs), figsize=(3.2 * len(lrs), 3.6), sharey=False, squeeze=False)
  for ax, lr in zip(axes[0], lrs):
    levels = sorted({r["level"] for r in results["runs"] if r["lr"] == lr})
    for arm, color, label in (("ticket", "C0", "ticket (rewind to init)"), ("reinit", "C3", "random reinit")):
      xs, ys = [], []
      for level in levels:
        rs = [r for r in results["runs"] if r["lr"] == lr and r["level"] == level and arm in r]
        if not rs:
          continue
        x = 100 * common.mean([1 - r["sparsity"] for r in rs])
        ax.plot([x] * len(rs), [100 * r[arm] for r in rs], ".", color=color, alpha=0.4)
        xs.append(x)
        ys.append(100 * common.mean([r[arm] for r in rs]))
      ax.plot(xs, ys, "-o", color=color, label=label, markersize=3)
    _percent_axis(ax, [100 * common.mean([1 - r["sparsity"] for r in results["runs"] if r["lr"] == lr and
                                          r["level"] == level]) for level in levels])
    ax.set_title(f"Adam lr {lr:g}", fontsize=9)
    ax.set_xlabel("% of weights left")
    ax.grid(True, which="both", alpha=0.3)
  axes[0][0].set_ylabel("final test accuracy %")
  axes[0][0].legend(fontsize=7)
  fig.suptitle("IMP tickets vs random reinit, LeNet-300-100, Fashion-MNIST", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
