"""Study 1: gradual magnitude pruning against one-shot magnitude pruning at the same training budget.

Zhu & Gupta 2017 prune gradually (a cubic schedule, pruning interleaved with training) rather than in one shot; the
sharp-minima paper argues one-shot pruning lands in worse minima. Both arms here train LeNet-300-100 on
Fashion-MNIST for the same number of steps with the same optimizer; gmp ramps the sparsity from 10% to 75% of
training (`configs/fashion_mnist_lenet300.py:method=gmp`), one-shot prunes to the target at 75% of training; both
fine-tune the last quarter with the masks fixed.
"""
from __future__ import annotations

from experiments.studies import common

NAME = "gradual_vs_oneshot"
TITLE = "Gradual pruning beats one-shot pruning"
PAPERS = ("Zhu & Gupta 2017, \"To prune, or not to prune: exploring the efficacy of pruning for model compression\"; "
          "\"Pruning artificial neural networks: a way to find well-generalizing, high-entropy sharp minima\" "
          "(Tartaglione et al. 2020).")
CLAIM = ("(paraphrased) Pruning gradually over training, interleaved with training steps, reaches a better model than "
         "pruning to the same sparsity in one shot and fine-tuning, and the gap widens as the sparsity rises.")
RULE = ("At each sparsity (80, 90, 95, 98%), final test accuracy of gmp against one-shot: " + common.ORDERING_RULE +
        " Overall: reproduced when reproduced at both 95% and 98% and not reversed at any sparsity; not reproduced "
        "when not reproduced at 95% or at 98%; inconclusive otherwise.")

HIGH = (0.95, 0.98)


def _sparsities(ctx):
  return ctx.pick((0.9,), (0.8, 0.9, 0.95, 0.98))


def _steps(ctx):
  return ctx.pick(40, 3000, 10000)


def setup(ctx) -> str:
  return (f"LeNet-300-100 on Fashion-MNIST, Adam 1.2e-3, batch 60, {_steps(ctx)} steps per run, uniform per-layer "
          f"magnitude pruning to {', '.join(f'{100 * s:g}%' for s in _sparsities(ctx))}; gmp: cubic schedule from "
          "10% to 75% of training, mask updated every 200 steps (a 20th of training below 4000 steps); one-shot: "
          "the whole target at 75% of training; both fine-tune the rest with fixed masks. Seeds "
          f"{', '.join(map(str, ctx.seeds))} (init, data order). Test accuracy at the end.")


def _config(method: str, target: float, seed: int, steps: int):
  from configs import fashion_mnist_lenet300  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_lenet300.get_config(f"method=gmp,target={target}")
  s = config.sparsity
  s.update_every = min(200, max(steps // 20, 1))
  if method == "oneshot":
    s.algorithm = "oneshot"
    s.begin_step = steps * 3 // 4
    s.end_step = steps * 3 // 4
  return common.quiet(config, steps, seed)


def run(ctx) -> dict:
  steps = _steps(ctx)
  out = {"steps": steps, "sparsities": list(_sparsities(ctx)), "seeds": list(ctx.seeds), "runs": []}
  for target in _sparsities(ctx):
    for method in ("gmp", "oneshot"):
      for seed in ctx.seeds:
        r = ctx.engine(f"{method}_s{target:g}_seed{seed}", _config(method, target, seed, steps))
        out["runs"].append({"method": method, "target": target, "seed": seed,
                            "test_accuracy": r["final"]["test_accuracy"], "sparsity": r["final"]["sparsity"]})
  return out


def _acc(results, method, target):
  return common.acc_by_seed(results, method, target, key="method")


def _per_sparsity(results):
  return common.per_sparsity(results, "gmp", "oneshot", key="method")


def verdict(results) -> common.Verdict:
  per = _per_sparsity(results)
  why = "; ".join(v.why for v in per.values())
  high = [per[t].verdict for t in HIGH if t in per]
  if len(high) == len(HIGH) and all(v == "reproduced" for v in high) and all(
      v.verdict != "not reproduced" for v in per.values()):
    return common.Verdict("reproduced", why)
  if any(v == "not reproduced" for v in high):
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why + ("" if len(high) == len(HIGH) else "; 95% and 98% were not run"))


def tables(results) -> str:
  per = _per_sparsity(results)
  rows = []
  for t in results["sparsities"]:
    g, o = _acc(results, "gmp", t), _acc(results, "oneshot", t)
    measured = sorted({round(r["sparsity"], 4) for r in results["runs"] if r["target"] == t})
    rows.append([f"{100 * t:g}%", ", ".join(f"{m:.4f}" for m in measured),
                 " / ".join(common.pct(g[s]) for s in sorted(g)), " / ".join(common.pct(o[s]) for s in sorted(o)),
                 f"{100 * (common.mean(list(g.values())) - common.mean(list(o.values()))):+.2f}", per[t].verdict])
  return common.table(["target", "measured sparsity", "gmp test acc % (per seed)", "one-shot test acc %",
                       "mean gap (points)", "verdict"], rows)


def plot(results, path: str) -> None:
  common.plot_arms(results, (("gmp", "C0", "gmp (mean over seeds)"), ("oneshot", "C3", "oneshot (mean over seeds)")),
                   "Gradual (gmp) vs one-shot magnitude pruning, LeNet-300-100, Fashion-MNIST", path, key="method")
