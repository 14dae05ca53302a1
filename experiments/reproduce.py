"""Paper reproductions: each writes a markdown table (ours next to the published numbers) and a plot.

  python -m experiments.reproduce lth_mnist1d --workdir=runs/lth_mnist1d [--seeds 0,1] [--levels 15]
  python -m experiments.reproduce compare_methods --workdir=runs/compare_methods [--seeds 0,1] [--num_steps N]
  python -m experiments.reproduce oneshot --workdir=runs/oneshot [--dense_gpt=runs/text_gpt/dense]
      [--recovery_steps N] [--models gpt,lenet300,mnist1d_mlp] [--settings s50,s60,s70,owl70,nm2_4,nm4_8]

lth_mnist1d: MNIST-1D lottery tickets (Greydanus 2020) with both controls (random_mask, random_reinit), one run per
seed in <workdir>/seed_<s>/, then <workdir>/report.md and <workdir>/lottery.png. Runs resume.

compare_methods: dense, gmp (uniform and global), oneshot, set, rigl, granet, snip, grasp, synflow, random and
movement at 90% and 98% sparsity on Fashion-MNIST LeNet-300-100 (MNIST-1D MLP when the Fashion-MNIST files are
missing), one resumable run per (method, sparsity, seed), then <workdir>/report.md (table and the papers' claims
checked) and <workdir>/compare.png (see experiments/compare_methods.py).

oneshot: post-training pruning (magnitude, Wanda, SparseGPT; 50/60/70% unstructured, 70% with OWL, 2:4, 4:8; with and
without a short recovery) of the dense GPT on pydocs, LeNet-300-100 on Fashion-MNIST and the MNIST-1D MLP, one
resumable run per setting, then <workdir>/report.md (tables beside Wanda's published LLaMA-2-7B numbers, the
published ordering checked) and <workdir>/oneshot.png (see experiments/oneshot.py).

all, and each study by name (gradual_vs_oneshot, sparse_vs_dense, ...): the reproductions of record, ten claims of
the pruning papers each given a verdict, written to <workdir>/REPRODUCTIONS.md (see experiments/studies/__init__.py):
  python -m experiments.reproduce all --workdir=runs/studies [--scale tiny|default|full] [--full] [--seeds 0,1,2]
      [--docs docs] [--jobs 2]
"""
from __future__ import annotations

import argparse
import os
import sys


from configs import mnist1d_mlp_lth
from experiments import compare_methods as compare_methods_lib
from experiments import oneshot as oneshot_lib
from experiments import published
from experiments import studies
from sparsejax import lottery


def _pct(x):
  return "" if x is None else f"{100 * x:.1f}"


def lth_table(runs: dict) -> str:
  """Per level: best test accuracy of tickets and both controls for each seed, and the published numbers."""
  seeds = sorted(runs)
  head = ["level", "sparsity"]
  for s in seeds:
    head += [f"ticket s{s}", f"random_mask s{s}", f"random_reinit s{s}"]
  head += ["published ticket", "published random"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  ref = published.MNIST1D_LTH
  for i, lv in enumerate(runs[seeds[0]]["levels"]):
    row = [str(lv["level"]), f"{lv['sparsity']:.3f}"]
    for s in seeds:
      lvs = runs[s]["levels"][i]
      ctrl = lvs.get("controls", {})
      row += [_pct(lvs["best_test_accuracy"]), _pct(ctrl.get("random_mask", {}).get("best_test_accuracy")),
              _pct(ctrl.get("random_reinit", {}).get("best_test_accuracy"))]
    row += [_pct(published.nearest(ref["dense"] if lv["level"] == 0 else ref["ticket"], lv["sparsity"])),
            _pct(published.nearest(ref["random_mask"], lv["sparsity"]) if lv["level"] else None)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def lth_summary(runs: dict) -> str:
  """The claims of the issue, checked on each seed from the numbers."""
  out = []
  for s, r in sorted(runs.items()):
    levels = r["levels"]
    dense = levels[0]["best_test_accuracy"]
    band = [lv for lv in levels if 0.8 <= lv["sparsity"] <= 0.95]
    best = max(band, key=lambda lv: lv["best_test_accuracy"]) if band else None
    high = [lv for lv in levels if 0.9 <= lv["sparsity"] <= 0.95 and "random_mask" in lv.get("controls", {})]
    margin = [lv["best_test_accuracy"] - lv["controls"]["random_mask"]["best_test_accuracy"] for lv in high]
    reinit = [lv["best_test_accuracy"] - lv["controls"]["random_reinit"]["best_test_accuracy"] for lv in high
              if "random_reinit" in lv.get("controls", {})]
    line = f"- seed {s}: dense best {_pct(dense)}%"
    if best:
      line += (f"; best ticket in 80-95% sparsity {_pct(best['best_test_accuracy'])}% at {best['sparsity']:.3f} "
               f"({100 * (best['best_test_accuracy'] - dense):+.1f} points over dense)")
    if margin:
      line += f"; ticket - random_mask at 90-95% sparsity: {', '.join(f'{100 * m:+.1f}' for m in margin)} points"
    if reinit:
      line += f"; ticket - random_reinit there: {', '.join(f'{100 * m:+.1f}' for m in reinit)} points"
    out.append(line)
  return "\n".join(out)


def lth_mnist1d(workdir: str, seeds, levels: int) -> dict:
  runs = {}
  for seed in seeds:
    config = mnist1d_mlp_lth.get_config()
    config.seed = seed
    config.sparsity.seed = seed
    config.sparsity.levels = levels
    config.sparsity.control = "both"
    config.training.progress = "none"
    runs[seed] = lottery.run_lottery(config, os.path.join(workdir, f"seed_{seed}"),
                                     reference=published.plot_points())
  report = ["# MNIST-1D lottery tickets: sparsejax against Greydanus 2020", "",
            "Best test accuracy (%) over each level's training (the published numbers are max test accuracy too).", "",
            lth_table(runs), "", lth_summary(runs), ""]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(report))
  _plot_seeds(workdir, runs)
  print("\n".join(report))
  return runs


def _plot_seeds(workdir, runs):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  styles = {"ticket": ("C0", "o"), "random_mask": ("C1", "s"), "random_reinit": ("C2", "^")}
  for kind, (color, marker) in styles.items():
    for j, (seed, r) in enumerate(sorted(runs.items())):
      rows = [(1 - lv["sparsity"], lv["best_test_accuracy"] if kind == "ticket"
               else lv.get("controls", {}).get(kind, {}).get("best_test_accuracy")) for lv in r["levels"]]
      rows = [(x, y) for x, y in rows if y is not None]
      ax.plot(*zip(*rows), marker=marker, color=color, alpha=0.5 + 0.5 * (j == 0),
              label=f"{kind}" if j == 0 else None)
  for label, pts in published.plot_points().items():
    marker = "k+" if "random" in label else "kx"  # published dense and tickets: x; published random pruning: +
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, markersize=10, label=label)
  ax.set_xscale("log")
  ax.invert_xaxis()
  ax.set_xlabel("fraction of weights remaining")
  ax.set_ylabel("best test accuracy")
  ax.set_title(f"MNIST-1D lottery tickets, seeds {', '.join(map(str, sorted(runs)))} (first seed darkest)", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(True, which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "lottery.png"), dpi=100)
  plt.close(fig)


def _studies(names):
  def run(workdir, seeds, args):
    ctx = studies.Context(workdir, "full" if args.full else args.scale, tuple(seeds or (0, 1, 2)))
    command = "python -m experiments.reproduce " + " ".join(args.argv)
    return studies.reproduce(names, ctx, command, docs=args.docs, jobs=args.jobs)
  return run


# Each takes (workdir, seeds) and the options of its own from the command line, by name.
EXPERIMENTS = {
    "all": _studies(studies.STUDIES),
    **{name: _studies((name,)) for name in studies.STUDIES},
    "lth_mnist1d": lambda workdir, seeds, args: lth_mnist1d(workdir, seeds, args.levels),
    "compare_methods": lambda workdir, seeds, args: compare_methods_lib.compare_methods(workdir, seeds,
                                                                                        num_steps=args.num_steps),
    "oneshot": lambda workdir, seeds, args: oneshot_lib.oneshot(
        workdir, recovery_steps_gpt=args.recovery_steps or oneshot_lib.RECOVERY_STEPS["gpt"],
        recovery_steps_mlp=args.recovery_steps or oneshot_lib.RECOVERY_STEPS["mlp"], dense_gpt=args.dense_gpt,
        models=args.models.split(",") if args.models else None,
        settings=args.settings.split(",") if args.settings else None, dense_steps=args.dense_steps,
        methods=args.methods.split(",") if args.methods else oneshot_lib.METHODS,
        compile_cache=not args.no_compile_cache),
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default=None, help="default 0,1; the studies (all, ...): 0,1,2")
  parser.add_argument("--scale", default="default", choices=studies.SCALES,
                      help="the studies: tiny (the test's, seconds), default (the committed report), full")
  parser.add_argument("--full", action="store_true", help="the studies: --scale=full")
  parser.add_argument("--docs", default=None,
                      help="the studies: also write DOCS/REPRODUCTIONS.md and DOCS/reproductions/*.png")
  parser.add_argument("--jobs", type=int, default=1,
                      help="the studies: run this many at once, each in its own process (2 on a 2-core machine)")
  parser.add_argument("--levels", type=int, default=15,
                      help="lth_mnist1d: IMP levels; 15 keep 0.8^15 = 3.5%% of the weights (0.965 sparsity)")
  parser.add_argument("--num_steps", type=int, default=None,
                      help="compare_methods: training steps per run (default: the configs' own, 10000 on "
                      "Fashion-MNIST, 3000 on MNIST-1D)")
  parser.add_argument("--dense_gpt", default=None,
                      help="oneshot: a finished workdir of configs/text_gpt.py (dense) to prune instead of training one")
  parser.add_argument("--recovery_steps", type=int, default=None,
                      help="oneshot: steps of recovery 'sparse' (default: 100 for the GPT, 300 for the MLPs)")
  parser.add_argument("--models", default=None, help="oneshot: a subset of gpt,lenet300,mnist1d_mlp")
  parser.add_argument("--settings", default=None, help="oneshot: a subset of s50,s60,s70,owl70,nm2_4,nm4_8")
  parser.add_argument("--methods", default=None, help="oneshot: a subset of magnitude,wanda,sparsegpt")
  parser.add_argument("--no_compile_cache", action="store_true",
                      help="oneshot: do not keep XLA executables in <workdir>/.jax_cache (tests)")
  parser.add_argument("--dense_steps", type=int, default=None,
                      help="oneshot: train the dense models for this many steps instead of their configs' (smoke)")
  args = parser.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  try:
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
  except ValueError:
    parser.error(f"--seeds: got {args.seeds!r}; accepted values: comma-separated integers such as 0,1,2")
  if args.jobs < 1:
    parser.error(f"--jobs: got {args.jobs}; accepted values: integers >= 1")
  if args.experiment not in ("all",) + studies.STUDIES:
    seeds = seeds or [0, 1]
  return EXPERIMENTS[args.experiment](args.workdir, seeds, args)


if __name__ == "__main__":
  main()
