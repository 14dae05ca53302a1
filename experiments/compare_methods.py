"""Every pruning method at 90% and 98% sparsity on one network: a table, a plot, and the papers' claims checked.

  python -m experiments.reproduce compare_methods --workdir=runs/compare_methods [--seeds 0,1] [--num_steps N]

Fashion-MNIST LeNet-300-100 (configs/fashion_mnist_lenet300_<method>.py), or the MNIST-1D MLP
(configs/mnist1d_mlp_<method>.py) when the Fashion-MNIST files are missing. Each run is the method's own config with
the target sparsity and the seed (model init, data order and the pruner's random draws) changed, and the training
length when `--num_steps` is given (every schedule is a fraction of it). Eval at the end only. Methods:

  dense       no pruning (once per seed; the reference line)
  gmp         gradual magnitude pruning, uniform per layer (Zhu & Gupta 2017), cubic from 10% to 75% of training
  gmp_global  the same with one global threshold (isolates the layer split from GraNet's regrowth)
  oneshot     magnitude pruning in one shot at 75% of training, then the same fine-tuning as gmp
  set, rigl, granet, snip, grasp, synflow, random, movement: configs/methods.py

One workdir per run, <workdir>/<method>_s<sparsity>_seed<seed>/ (dense: dense_seed<seed>/), so an interrupted
comparison resumes and a finished run is not redone. Writes <workdir>/report.md (the table and the claims of
the papers checked against it), <workdir>/compare.png (test accuracy against sparsity per method) and
<workdir>/summary.json (every run's final numbers). XLA executables are cached in <workdir>/.jax_cache.

Measured (2 CPU cores shared with other jobs): 46 runs of 10000 steps in 12 min (722 s); seed 0 at 0.9 reproduces
the number in each config's docstring exactly.
"""
from __future__ import annotations

import importlib
import json
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from sparsejax import train

METHODS = ("gmp", "gmp_global", "oneshot", "set", "rigl", "granet", "snip", "grasp", "synflow", "random", "movement")
SPARSITIES = (0.9, 0.98)
FAMILIES = {  # config family -> default training steps of the comparison
    "fashion_mnist_lenet300": 10000,  # the configs' own length (10 epochs at batch 60)
    "mnist1d_mlp": 3000,
}


def choose_family() -> str:
  """fashion_mnist_lenet300 when its data loads, else mnist1d_mlp."""
  config = importlib.import_module("configs.fashion_mnist_lenet300_dense").get_config()
  try:
    train.create_dataset(config.data, seed=0)
    return "fashion_mnist_lenet300"
  except Exception as e:  # pylint: disable=broad-except (any failure to load means: use MNIST-1D)
    print(f"Fashion-MNIST is not available ({type(e).__name__}: {e}); comparing on MNIST-1D", flush=True)
    return "mnist1d_mlp"


def method_config(family: str, method: str, target: float, seed: int, num_steps: int):
  """The config of one run: the method's config file, with target, seed and training length changed."""
  if method == "dense":
    config = importlib.import_module(f"configs.{family}_dense").get_config()
  elif method in ("gmp", "gmp_global", "oneshot"):
    config = importlib.import_module(f"configs.{family}_gmp").get_config()
    if method == "gmp_global":
      config.sparsity.distribution = "global"
    elif method == "oneshot":
      config.sparsity.algorithm = "oneshot"
      config.sparsity.begin_step = config.training.get_ref("num_steps") * 3 // 4
      config.sparsity.end_step = config.sparsity.get_ref("begin_step")
  else:
    config = importlib.import_module(f"configs.{family}_{method}").get_config()
  if method != "dense":
    config.sparsity.target = target
    config.sparsity.seed = seed
  config.seed = seed
  training = config.training
  training.num_steps = num_steps
  training.eval_every = 0          # test accuracy at the end only
  training.log_every = 500
  training.checkpoint_every = max(num_steps // 2, 1)
  training.keep_checkpoints = 1
  training.progress = "none"
  return config


def run_name(method: str, target: float, seed: int) -> str:
  return f"dense_seed{seed}" if method == "dense" else f"{method}_s{target:g}_seed{seed}"


def run_all(workdir: str, seeds: Sequence[int], num_steps: Optional[int] = None, family: Optional[str] = None,
            methods: Sequence[str] = METHODS, sparsities: Sequence[float] = SPARSITIES) -> dict:
  """Trains (or reads back) every run; returns {(method, target, seed): results.json}."""
  family = family or choose_family()
  num_steps = num_steps or FAMILIES[family]
  plan = [("dense", 0.0, s) for s in seeds]
  plan += [(m, t, s) for t in sparsities for m in methods for s in seeds]
  runs, started = {}, time.time()
  for i, (method, target, seed) in enumerate(plan):
    run_dir = os.path.join(workdir, run_name(method, target, seed))
    t0 = time.time()
    results = train.train_and_evaluate(method_config(family, method, target, seed, num_steps), run_dir)
    runs[(method, target, seed)] = results
    final = results["final"]
    print(f"[{i + 1}/{len(plan)}] {run_name(method, target, seed)}: test accuracy {final['test_accuracy']:.4f}, "
          f"sparsity {final['sparsity']:.4f} ({time.time() - t0:.0f} s; {time.time() - started:.0f} s so far)",
          flush=True)
  return {"family": family, "num_steps": num_steps, "seeds": list(seeds), "methods": list(methods),
          "sparsities": list(sparsities), "runs": runs}


def _pct(x) -> str:
  return f"{100 * x:.2f}"


def rows(summary: dict) -> list[dict]:
  """One row per (method, sparsity): mean and per-seed test accuracy, measured sparsity, per-layer densities."""
  out = []
  seeds, runs = summary["seeds"], summary["runs"]
  for method, target in [("dense", 0.0)] + [(m, t) for t in summary["sparsities"] for m in summary["methods"]]:
    rs = [runs[(method, target, s)] for s in seeds]
    accs = [r["final"]["test_accuracy"] for r in rs]
    out.append({"method": method, "target": target, "mean": float(np.mean(accs)), "accs": accs,
                "sparsity": float(np.mean([r["final"]["sparsity"] for r in rs])),
                "densities": {p: 1 - lay["sparsity"] for p, lay in rs[0]["layers"].items()},
                "collapsed": sorted({p for r in rs for p, lay in r["layers"].items() if lay["nnz"] == 0}),
                "seconds": float(np.mean([r["wall_seconds"] for r in rs]))})
  return out


def table(summary: dict) -> str:
  """The markdown table; per-layer densities are those of the first seed, in the order of the network."""
  seeds, all_rows = summary["seeds"], rows(summary)
  layers = " / ".join(p.split("/")[0] for p in all_rows[0]["densities"])
  head = ["method", "target", "mean test acc (%)"] + [f"seed {s}" for s in seeds]
  head += ["measured sparsity", f"density % ({layers})", "train s/run"]
  lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
  for r in all_rows:
    cells = [r["method"], f"{r['target']:g}", _pct(r["mean"])] + [_pct(a) for a in r["accs"]]
    cells += [f"{r['sparsity']:.4f}", " / ".join(f"{100 * d:.1f}" for d in r["densities"].values()),
              f"{r['seconds']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _acc(summary, method, target):
  seeds = summary["seeds"]
  return np.array([summary["runs"][(method, target, s)]["final"]["test_accuracy"] for s in seeds])


def _compare(summary, a, b, target, claim) -> Optional[str]:
  """One claim 'a beats b at target', judged per seed: holds (every seed), contradicted (no seed), or mixed."""
  methods = set(summary["methods"]) | {"dense"}
  if a not in methods or b not in methods:
    return None
  ta = 0.0 if a == "dense" else target
  tb = 0.0 if b == "dense" else target
  diff = _acc(summary, a, ta) - _acc(summary, b, tb)
  verdict = "holds" if np.all(diff > 0) else "CONTRADICTED" if np.all(diff <= 0) else "mixed (seeds disagree)"
  per_seed = ", ".join(f"{100 * d:+.2f}" for d in diff)
  return (f"- {claim} at {target:g}: {a} - {b} = {100 * diff.mean():+.2f} points (per seed {per_seed}): "
          f"**{verdict}**")


CLAIMS = [  # (a, b, claim): the papers say a beats b (REFERENCES.md)
    ("granet", "gmp", "GraNet (Liu et al. 2021): regrowth beats plain GMP at high sparsity"),
    ("granet", "gmp_global", "GraNet: regrowth beats GMP with the same global split"),
    ("rigl", "set", "RigL (Evci et al. 2020): gradient growth beats random growth (SET)"),
    ("rigl", "random", "RigL: dynamic sparse training beats a static random mask"),
    ("gmp", "oneshot", "Zhu & Gupta 2017: gradual beats one-shot pruning at the same final sparsity"),
    ("gmp_global", "gmp", "Global magnitude beats layerwise"),
    ("snip", "random", "SNIP (Lee et al. 2019) beats random pruning at init"),
    ("grasp", "random", "GraSP (Wang et al. 2020) beats random pruning at init"),
    ("synflow", "random", "SynFlow (Tanaka et al. 2020) beats random pruning at init"),
    ("grasp", "snip", "GraSP beats SNIP at high sparsity"),
    ("synflow", "snip", "SynFlow beats SNIP at extreme sparsity (no layer collapse)"),
    ("movement", "gmp", "Movement (Sanh et al. 2020) beats magnitude at high sparsity (claimed for fine-tuning "
     "pretrained models; here trained from scratch)"),
]


def claims(summary: dict) -> str:
  out = []
  for target in summary["sparsities"]:
    for a, b, claim in CLAIMS:
      line = _compare(summary, a, b, target, claim)
      if line:
        out.append(line)
  for r in rows(summary):
    if r["target"] > 0 and r["collapsed"]:
      out.append(f"- layer collapse: {r['method']} at {r['target']:g} emptied {', '.join(r['collapsed'])} "
                 f"(mean test accuracy {_pct(r['mean'])}%)")
  collapsed = {r["method"] for r in rows(summary) if r["collapsed"]}
  if "synflow" in summary["methods"]:
    out.append(f"- SynFlow avoids layer collapse: **{'CONTRADICTED' if 'synflow' in collapsed else 'holds'}**; "
               f"methods with an empty layer: {sorted(collapsed) or 'none'}")
  return "\n".join(out)


def plot(summary: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 5))
  all_rows = rows(summary)
  dense = [r for r in all_rows if r["method"] == "dense"][0]
  ax.axhline(dense["mean"], color="k", linestyle="--", label=f"dense ({_pct(dense['mean'])}%)")
  markers = "os^vD<>phX*"
  for j, method in enumerate(summary["methods"]):
    rs = [r for r in all_rows if r["method"] == method]
    dodge = 0.0015 * (j - (len(summary["methods"]) - 1) / 2)  # side by side, so that the bars stay readable
    x = [r["sparsity"] + dodge for r in rs]
    y = [r["mean"] for r in rs]
    lo = [r["mean"] - min(r["accs"]) for r in rs]
    hi = [max(r["accs"]) - r["mean"] for r in rs]
    ax.errorbar(x, y, yerr=[lo, hi], marker=markers[j % len(markers)], color=f"C{j % 10}",
                linestyle="-" if j < 10 else ":", capsize=3, label=method)
  ax.set_xlabel("sparsity (fraction of prunable weights that are zero; methods drawn side by side)")
  ax.set_ylabel(f"test accuracy (mean of {len(summary['seeds'])} seeds; bars: min-max)")
  ax.set_title(f"{summary['family']}, {summary['num_steps']} steps per run")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8, ncol=2, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def compare_methods(workdir: str, seeds: Sequence[int], num_steps: Optional[int] = None,
                    family: Optional[str] = None, methods: Sequence[str] = METHODS,
                    sparsities: Sequence[float] = SPARSITIES, compile_cache: bool = True) -> dict:
  """Runs the comparison in `workdir` (resuming), writes report.md, compare.png and summary.json; returns the
  summary ({"family", "num_steps", "seeds", "methods", "sparsities", "runs": {(method, target, seed): results}}).

  compile_cache: keep XLA executables in <workdir>/.jax_cache (JAX's persistent compilation cache) unless a cache
    directory is already configured. The runs of one method at one sparsity differ only in the seed, and the fixed-mask
    methods share one train step, so most compilations are done once; results do not change.
  """
  started = time.time()
  if compile_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), ".jax_cache"))
  summary = run_all(workdir, seeds, num_steps, family, methods, sparsities)
  data = "Fashion-MNIST LeNet-300-100" if summary["family"].startswith("fashion") else "MNIST-1D MLP"
  report = [f"# Pruning methods compared: {data}", "",
            f"Each method's config (configs/{summary['family']}_<method>.py; gmp_global and oneshot are the gmp "
            f"config with a global split / one prune at 75%) trained for {summary['num_steps']} steps, seeds "
            f"{', '.join(map(str, seeds))}; final test accuracy. Measured sparsity is counted from the weight arrays. "
            "Density: the percentage of each layer's weights kept (first seed).", "",
            table(summary), "",
            "## The papers' claims against these numbers", "",
            "A claim holds when it holds on every seed, is CONTRADICTED when it fails on every seed.", "",
            claims(summary), "",
            f"Wall time of this invocation: {time.time() - started:.0f} s (runs already finished are read back).", ""]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(report))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({**{k: v for k, v in summary.items() if k != "runs"},
               "runs": [{"method": m, "target": t, "seed": s, **r["final"], "layers": r["layers"]}
                        for (m, t, s), r in summary["runs"].items()]}, f, indent=1)
  plot(summary, os.path.join(workdir, "compare.png"))
  print("\n".join(report), flush=True)
  return summary
