"""Study 3: global magnitude pruning against layerwise (uniform) magnitude pruning, and a per-layer floor against the
layer collapse a global threshold risks at extreme sparsity.

Stier, Darji & Granitzer 2021 find magnitude "class-blinded" (global) pruning better than "class-uniform" (layerwise)
pruning; Gupta et al. 2022 find vanilla global magnitude pruning (Global MP) competitive with complex methods and fix
its layer collapse at high sparsity by keeping a minimum number of weights in every layer ("Minimum Threshold").
The papers prune ResNets, WRN-28-8, MobileNet-V1 and FastGRNN (CIFAR-10, ImageNet, HAR-2) and an MNIST MLP; scaled
down here to an MLP on MNIST-1D, 1500 steps per run (37.5 epochs), gradual magnitude pruning (cubic schedule) for all
three arms.

The model is chosen to put a global threshold at risk: 40 -> 512 -> 512 -> 10 (no skip connection, LeCun normal
init). The input layer has fan-in 40, so its weights start about 3.6 times larger than those of the 512 x 512 hidden
layer (fan-in 512), which holds 91% of the weights; one threshold over all layers then takes most of the budget from the
input layer. Each arm differs only in `config.sparsity.distribution` and `min_density` (configs/default.py).
"""
from __future__ import annotations

from experiments.studies import common

NAME = "global_vs_layerwise"
TITLE = "Global beats layerwise magnitude pruning, and a per-layer floor fixes collapse"
PAPERS = ("Gupta, Camci, Keneta, Vaidyanathan, Kanodia, Foo, Min & Lin 2022, \"Is Complexity Required for Neural "
          "Network Pruning? A Case Study on Global Magnitude Pruning\" (arXiv:2209.14624); Stier, Darji & Granitzer "
          "2021, \"Experiments on Properties of Hidden Structures of Sparse Neural Networks\" (arXiv:2107.12917).")
CLAIM = ("Surprisingly, we find that vanilla Global MP outperforms all the other SOTA techniques and achieves a new "
         "SOTA result. [...] Moreover, a common issue that many pruning algorithms run into at high sparsity rates, "
         "namely, layer-collapse, can be easily fixed in Global MP by setting a minimum threshold of weights to be "
         "retained in each layer. (Gupta et al., abstract of arXiv:2209.14624)\n"
         "[...] we show how magnitude class blinded pruning achieves 97.5% on MNIST with 80% compression and "
         "re-training, which is 0.5 points more than without compression, that magnitude class uniform pruning is "
         "significantly inferior to it [...] (Stier et al., abstract)")
RULE = ("A layer is collapsed when it keeps fewer weights than it has output units (the kernel's last dimension), "
        "counted from the arrays at the end of training (results.json `layers`): at least one of its units then "
        "receives no input (keeping 0 is the extreme case). Arms: uniform (layerwise), global, and global with the "
        "per-layer floor min_density = (1 - target) / 2. (a) Global beats layerwise: at each sparsity where global "
        "collapsed no layer on any seed, final test accuracy of global against uniform: " + common.ORDERING_RULE +
        " (b) The floor fixes collapse: at each sparsity where global collapsed a layer on some seed, not reproduced "
        "if global with the floor collapses a layer on any seed, else global with the floor against global by the "
        "same ordering rule. Overall: reproduced when every sub-claim that applies is reproduced and both (a) and (b) "
        "applied at some sparsity; not reproduced when a sub-claim that applies is not reproduced; inconclusive "
        "otherwise (including when global never collapsed, so the floor was not put to the test).")

ARMS = ("uniform", "global", "global_floor")
LAYERS = ("dense_0/kernel", "dense_1/kernel", "head/kernel")


def _sparsities(ctx):
  return ctx.pick((0.99,), (0.95, 0.99, 0.995))


def _steps(ctx):
  return ctx.pick(40, 1500, 6000)


def _every(steps: int) -> int:
  return min(100, max(steps // 20, 1))


def floor(target: float) -> float:
  """The global_floor arm's min_density: half the overall density."""
  return (1.0 - target) / 2


def setup(ctx) -> str:
  steps = _steps(ctx)
  return (f"MNIST-1D (4000 train / 1000 test), MLP 40 -> 512 -> 512 -> 10, ReLU, LeCun normal init, Adam 1e-3, batch "
          f"100, {steps} steps per run (scaled down from the papers' CIFAR / ImageNet CNNs). All arms: gradual "
          "magnitude pruning, cubic schedule from 10% to 75% of training, a mask update every "
          f"{_every(steps)} steps, then fine-tuning with fixed masks, to "
          f"{', '.join(f'{100 * s:g}%' for s in _sparsities(ctx))}. uniform: every layer at the target; global: one "
          "threshold over all kernels; global_floor: global with min_density = (1 - target) / 2, i.e. every layer "
          "keeps at least half the overall density (the minimum-threshold fix). Seeds "
          f"{', '.join(map(str, ctx.seeds))} (init, data order). Test accuracy at the end; kept weights per layer "
          "counted from the arrays.")


def _config(arm: str, target: float, seed: int, steps: int):
  from configs import methods, mnist1d_mlp  # pylint: disable=g-import-not-at-top
  config = mnist1d_mlp.get_config("method=dense")
  config.model.name = "mlp"
  config.model.widths = (512, 512)
  config.model.kernel_init = "lecun"
  methods.set_gmp(config, target, "uniform" if arm == "uniform" else "global", begin_fraction=0.1,
                  update_every=_every(steps))
  if arm == "global_floor":
    config.sparsity.min_density = floor(target)
  return common.quiet(config, steps, seed)


def collapsed(layers: dict) -> list[str]:
  """The layers of results.json `layers` that keep fewer weights than they have output units."""
  return [name for name, layer in layers.items() if layer["nnz"] < layer["shape"][-1]]


def run(ctx) -> dict:
  return common.engine_grid(ctx, _steps(ctx), _sparsities(ctx), ARMS, _config, lambda r: {
      "test_accuracy": r["final"]["test_accuracy"], "sparsity": r["final"]["sparsity"],
      "layers": {k: {"nnz": v["nnz"], "shape": v["shape"]} for k, v in r["layers"].items()},
      "collapsed": collapsed(r["layers"])})


_runs = common.runs_of
_acc = common.acc_by_seed


def _collapses(results, arm, target) -> bool:
  return any(r["collapsed"] for r in _runs(results, arm, target))


def _per_sparsity(results) -> dict:
  """{target: (sub-claim 'a' or 'b', Verdict)}."""
  out = {}
  for t in results["sparsities"]:
    where = f"{100 * t:g}%"
    if not _collapses(results, "global", t):
      out[t] = ("a", common.ordering(_acc(results, "global", t), _acc(results, "uniform", t),
                                     f"(a) {where}, global vs uniform"))
    elif _collapses(results, "global_floor", t):
      bad = sorted({f"{n} (seed {r['seed']})" for r in _runs(results, "global_floor", t) for n in r["collapsed"]})
      out[t] = ("b", common.Verdict("not reproduced", f"(b) {where}: the floor still collapsed {', '.join(bad)}"))
    else:
      out[t] = ("b", common.ordering(_acc(results, "global_floor", t), _acc(results, "global", t),
                                     f"(b) {where}, global with floor vs global (collapsed)"))
  return out


def verdict(results) -> common.Verdict:
  per = _per_sparsity(results)
  why = "; ".join(v.why for _, v in per.values())
  kinds = {k for k, _ in per.values()}
  verdicts = [v.verdict for _, v in per.values()]
  if "not reproduced" in verdicts:
    return common.Verdict("not reproduced", why)
  if kinds == {"a", "b"} and all(v == "reproduced" for v in verdicts):
    return common.Verdict("reproduced", why)
  if "b" not in kinds:
    why += "; global collapsed no layer, so the floor was not put to the test"
  elif "a" not in kinds:
    why += "; global collapsed at every sparsity, so (a) was not tested"
  return common.Verdict("inconclusive", why)


def _kept(runs) -> str:
  """Kept weights per layer (min-max over seeds), counted from the arrays."""
  parts = []
  for name in LAYERS:
    ns = [r["layers"][name]["nnz"] for r in runs]
    parts.append(f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}")
  return " / ".join(parts)


def _collapsed_cell(runs) -> str:
  hits = [f"{n.split('/')[0]} (seed {r['seed']})" for r in runs for n in r["collapsed"]]
  return ", ".join(hits) if hits else "none"


def tables(results) -> str:
  per = _per_sparsity(results)
  rows = []
  for t in results["sparsities"]:
    for arm in ARMS:
      runs = _runs(results, arm, t)
      acc = _acc(results, arm, t)
      rows.append([f"{100 * t:g}%", arm + (f" ({floor(t):g})" if arm == "global_floor" else ""),
                   ", ".join(sorted({f"{r['sparsity']:.4f}" for r in runs})), _kept(runs), _collapsed_cell(runs),
                   " / ".join(common.pct(acc[s]) for s in sorted(acc)), common.pct(common.mean(list(acc.values())))])
  units = " / ".join(str(results["runs"][0]["layers"][n]["shape"][-1]) for n in LAYERS)
  main = common.table(["target", "arm (min_density)", "measured sparsity",
                       f"kept weights {' / '.join(n.split('/')[0] for n in LAYERS)} (units {units})",
                       "collapsed layers", "test acc % (per seed)", "mean"], rows)
  verdicts = common.table(["target", "sub-claim", "verdict", "reason"],
                          [[f"{100 * t:g}%", k, v.verdict, v.why] for t, (k, v) in per.items()])
  return main + "\n\n" + verdicts


def plot(results, path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ts = results["sparsities"]
  xs = list(range(len(ts)))
  for i, (arm, color) in enumerate(zip(ARMS, ("C3", "C0", "C2"))):
    for x, t in zip(xs, ts):
      for r in _runs(results, arm, t):
        marker = "x" if r["collapsed"] else "o"
        ax.plot(x + 0.1 * (i - 1), 100 * r["test_accuracy"], marker, color=color, alpha=0.6)
    ax.plot([x + 0.1 * (i - 1) for x in xs],
            [100 * common.mean(list(_acc(results, arm, t).values())) for t in ts], "-", color=color,
            label=f"{arm}, mean over seeds")
  ax.set_xticks(xs, [f"{100 * t:g}%" for t in ts])
  ax.set_xlabel("sparsity (x: a run with a collapsed layer)")
  ax.set_ylabel("test accuracy %")
  ax.set_title("Global vs layerwise magnitude pruning, MLP 40-512-512-10, MNIST-1D", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
