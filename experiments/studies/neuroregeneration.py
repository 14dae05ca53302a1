"""Study 7: GraNet's neuroregeneration, gradual magnitude pruning with and without regrowth.

Liu et al. 2021 add "zero-cost neuroregeneration" to gradual magnitude pruning (GraNet): at every pruning step each
layer also drops a fraction of its remaining weights by magnitude and regrows as many by gradient, and they report that
this improves on plain GMP, the more so at high sparsity (CIFAR-10/100 with VGG-19 / ResNet-50, ImageNet with
ResNet-50, about 160-250 epochs). Scaled down here to LeNet-300-100 on Fashion-MNIST, 3000 steps. Both arms are the
granet schedule of `configs/fashion_mnist_lenet300.py:method=granet` (configs/methods.py: dense start, cubic global
magnitude pruning from 10% to 75% of training every 100 steps, then a fixed mask); the gmp arm is the same config with
`algorithm = "gmp"`, so the two differ only in the regrowth (drop 50% of each layer's remaining weights, cosine-decayed,
regrown by |gradient|, at the same update steps until the end of pruning).
"""
from __future__ import annotations

from experiments.studies import common

NAME = "neuroregeneration"
TITLE = "Regrowth (GraNet) beats plain gradual magnitude pruning"
PAPERS = ("Liu, Chen, Chen, Atashgahi, Yin, Kou, Shen, Pechenizkiy, Wang & Mocanu 2021, \"Sparse Training via Boosting "
          "Pruning Plasticity with Neuroregeneration\" (NeurIPS 2021, arXiv:2106.10404).")
CLAIM = ("We further find that pruning plasticity can be substantially improved by injecting a brain-inspired "
         "mechanism called neuroregeneration, i.e., to regenerate the same number of connections as pruned. We design "
         "a novel gradual magnitude pruning (GMP) method, named gradual pruning with zero-cost neuroregeneration "
         "(GraNet), that advances state of the art.")
RULE = ("At each sparsity (95, 98%), final test accuracy of granet (gmp plus regrowth) against gmp, same schedule and "
        "the same global layer split: " + common.ORDERING_RULE + " Overall: reproduced when reproduced at both "
        "sparsities; not reproduced when not reproduced at both; inconclusive otherwise.")

ARMS = ("granet", "gmp")


def _sparsities(ctx):
  return ctx.pick((0.95,), (0.95, 0.98))


def _steps(ctx):
  return ctx.pick(40, 3000, 10000)


def _every(steps: int) -> int:
  return min(100, max(steps // 20, 1))


def setup(ctx) -> str:
  steps = _steps(ctx)
  return (f"LeNet-300-100 on Fashion-MNIST, Adam 1.2e-3, batch 60, {steps} steps per run (scaled down from the paper's "
          "CIFAR / ImageNet CNNs and 160+ epochs). Both arms: dense start, cubic schedule to "
          f"{', '.join(f'{100 * s:g}%' for s in _sparsities(ctx))} from 10% to 75% of training, a mask update every "
          f"{_every(steps)} steps, one global magnitude threshold (the paper's GraNet), then fine-tuning with the mask "
          "fixed. granet adds, at the same update steps before the end of pruning, the drop of a cosine-decayed "
          "fraction (0.5 at the start) of each layer's remaining weights by magnitude and the regrowth of as many by "
          f"|gradient|. Seeds {', '.join(map(str, ctx.seeds))} (init, data order). Test accuracy at the end.")


def _config(arm: str, target: float, seed: int, steps: int):
  from configs import fashion_mnist_lenet300  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_lenet300.get_config(f"method=granet,target={target}")
  s = config.sparsity
  s.update_every = _every(steps)
  if arm == "gmp":
    s.algorithm = "gmp"  # the same schedule, distribution and steps: only the regrowth is gone
  return common.quiet(config, steps, seed)


def run(ctx) -> dict:
  return common.engine_grid(ctx, _steps(ctx), _sparsities(ctx), ARMS, _config, lambda r: {
      "test_accuracy": r["final"]["test_accuracy"], "test_loss": r["final"]["test_loss"],
      "sparsity": r["final"]["sparsity"], "layers": {k: v["sparsity"] for k, v in r["layers"].items()}})


_runs = common.runs_of
_acc = common.acc_by_seed


def _per_sparsity(results):
  return common.per_sparsity(results, "granet", "gmp")


def verdict(results) -> common.Verdict:
  per = list(_per_sparsity(results).values())
  why = "; ".join(v.why for v in per)
  if all(v.verdict == "reproduced" for v in per):
    return common.Verdict("reproduced", why)
  if all(v.verdict == "not reproduced" for v in per):
    return common.Verdict("not reproduced", why)
  return common.Verdict("inconclusive", why)


def _layers(runs) -> str:
  """Mean per-layer sparsity over seeds, counted from the arrays."""
  names = list(runs[0]["layers"])
  return " / ".join(f"{common.mean([r['layers'][n] for r in runs]):.3f}" for n in names)


def tables(results) -> str:
  per = _per_sparsity(results)
  rows = []
  for t in results["sparsities"]:
    g, m = _acc(results, "granet", t), _acc(results, "gmp", t)
    measured = sorted({f"{r['sparsity']:.4f}" for a in ARMS for r in _runs(results, a, t)})
    rows.append([f"{100 * t:g}%", ", ".join(measured),
                 " / ".join(common.pct(g[s]) for s in sorted(g)), " / ".join(common.pct(m[s]) for s in sorted(m)),
                 f"{100 * (common.mean(list(g.values())) - common.mean(list(m.values()))):+.2f}", per[t].verdict])
  main = common.table(["target", "measured sparsity", "granet test acc % (per seed)", "gmp test acc %",
                       "mean gap (points)", "verdict"], rows)
  names = list(results["runs"][0]["layers"])
  split = common.table(["target", "arm", f"layer sparsity ({' / '.join(names)}), mean over seeds"],
                       [[f"{100 * t:g}%", a, _layers(_runs(results, a, t))] for t in results["sparsities"]
                        for a in ARMS])
  return main + "\n\nThe global threshold's split across layers (counted from the arrays):\n\n" + split


def plot(results, path: str) -> None:
  common.plot_arms(results, (("granet", "C2", "granet (gmp + regrowth), mean over seeds"),
                             ("gmp", "C0", "gmp, mean over seeds")),
                   "Gradual magnitude pruning with and without regrowth, LeNet-300-100, Fashion-MNIST", path)
