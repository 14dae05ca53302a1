"""Study 2: a large sparse network against a small dense one with the same number of non-zero parameters.

Zhu & Gupta 2017 ("To prune, or not to prune") compare large-but-pruned models with smaller dense models of identical
memory footprint (deep CNNs, stacked LSTMs, seq2seq LSTMs) and find the large-sparse ones consistently better. Scaled
down here to the smallest network of the pruning literature: LeNet-300-100 on Fashion-MNIST pruned by gmp (uniform per
layer, `configs/fashion_mnist_lenet300.py:method=gmp`) to 80, 90, 95 and 98%, against a dense MLP with hidden widths
(a, round(a / 3)) (LeNet's 3:1 ratio), a the smallest width whose parameter count, kernels and biases, is at least
the sparse model's non-zeros (kernels counted from its arrays, plus its 410 biases, which are never pruned). Both
train 3000 steps (the paper trains to convergence on far larger models) with the same optimizer, batch and data.
"""
from __future__ import annotations

from experiments.studies import common

NAME = "sparse_vs_dense"
TITLE = "Large-sparse beats small-dense at equal non-zeros"
PAPERS = ("Zhu & Gupta 2017, \"To prune, or not to prune: exploring the efficacy of pruning for model compression\" "
          "(arXiv:1710.01878).")
CLAIM = ("We compare the accuracy of large, but pruned models (large-sparse) and their smaller, but dense "
         "(small-dense) counterparts with identical memory footprint. Across a broad range of neural network "
         "architectures (deep CNNs, stacked LSTM, and seq2seq LSTM models), we find large-sparse models to "
         "consistently outperform small-dense models and achieve up to 10x reduction in number of non-zero parameters "
         "with minimal loss in accuracy.")
RULE = ("At each sparsity (80, 90, 95, 98%), final test accuracy of the sparse LeNet-300-100 (gmp) against the dense "
        "MLP whose parameters (kernels and biases) are at least the sparse model's non-zeros: " + common.ORDERING_RULE +
        " Overall (\"consistently\"): reproduced when reproduced at every sparsity; not reproduced when not reproduced "
        "at some sparsity; inconclusive otherwise.")


def _sparsities(ctx):
  return ctx.pick((0.9,), (0.8, 0.9, 0.95, 0.98))


def _steps(ctx):
  return ctx.pick(40, 3000, 10000)


def setup(ctx) -> str:
  return (f"Fashion-MNIST, Adam 1.2e-3, batch 60, {_steps(ctx)} steps per run (scaled down from the paper's ImageNet "
          "CNNs and LSTMs trained to convergence). Large-sparse: LeNet-300-100 pruned by gmp, uniform per "
          f"layer, to {', '.join(f'{100 * s:g}%' for s in _sparsities(ctx))} (cubic schedule from 10% to 75% of "
          "training, then fine-tuning with fixed masks). Small-dense: an MLP with hidden widths (a, round(a/3)), a the "
          "smallest width whose kernels plus biases are at least the sparse model's non-zero kernels (counted from its "
          "arrays at the end) plus its 410 biases; so biases count, and the dense model never has fewer "
          f"parameters. Same init scheme (LeCun normal), optimizer, batch and data order. Seeds "
          f"{', '.join(map(str, ctx.seeds))} (init, data order). Test accuracy at the end.")


def _sparse_config(target: float, seed: int, steps: int):
  from configs import fashion_mnist_lenet300  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_lenet300.get_config(f"method=gmp,target={target}")
  config.sparsity.update_every = min(200, max(steps // 20, 1))
  return common.quiet(config, steps, seed)


def _dense_config(widths, seed: int, steps: int):
  from configs import fashion_mnist_lenet300  # pylint: disable=g-import-not-at-top
  config = fashion_mnist_lenet300.get_config("method=dense")
  config.model.name = "mlp"
  config.model.widths = tuple(widths)
  return common.quiet(config, steps, seed)


def mlp_params(n_in: int, widths, n_out: int) -> tuple[int, int]:
  """(kernel entries, biases) of a dense MLP n_in -> widths -> n_out."""
  dims = [n_in] + list(widths) + [n_out]
  return sum(a * b for a, b in zip(dims, dims[1:])), sum(dims[1:])


def matched_widths(budget: int, n_in: int, n_out: int, ratio: float) -> tuple[int, int]:
  """The smallest (a, round(a / ratio)) whose kernels plus biases are at least `budget`."""
  a = 1
  while True:
    widths = (a, max(round(a / ratio), 1))
    if sum(mlp_params(n_in, widths, n_out)) >= budget:
      return widths
    a += 1


def _sparse_size(r: dict) -> dict:
  """From a sparse run's results.json: its non-zero kernels (counted from the arrays), biases (one per unit of every
  layer, never pruned), the input and output sizes and the hidden-width ratio."""
  shapes = [r["layers"][k]["shape"] for k in ("dense_0/kernel", "dense_1/kernel", "head/kernel")]
  biases = sum(s[-1] for s in shapes)
  return {"nnz": r["final"]["nnz"], "biases": biases, "n_in": shapes[0][0], "n_out": shapes[-1][-1],
          "ratio": shapes[0][-1] / shapes[1][-1]}


def run(ctx) -> dict:
  steps = _steps(ctx)
  out = {"steps": steps, "sparsities": list(_sparsities(ctx)), "seeds": list(ctx.seeds), "runs": []}
  for target in _sparsities(ctx):
    for seed in ctx.seeds:
      r = ctx.engine(f"sparse_s{target:g}_seed{seed}", _sparse_config(target, seed, steps))
      size = _sparse_size(r)
      out["runs"].append({"arm": "sparse", "target": target, "seed": seed, "test_accuracy": r["final"]["test_accuracy"],
                          "sparsity": r["final"]["sparsity"], "kernels": size["nnz"], "biases": size["biases"],
                          "widths": [r["layers"]["dense_0/kernel"]["shape"][-1],
                                     r["layers"]["dense_1/kernel"]["shape"][-1]]})
      widths = matched_widths(size["nnz"] + size["biases"], size["n_in"], size["n_out"], size["ratio"])
      d = ctx.engine(f"dense_s{target:g}_seed{seed}", _dense_config(widths, seed, steps))
      biases = sum(d["layers"][k]["shape"][-1] for k in d["layers"])
      out["runs"].append({"arm": "dense", "target": target, "seed": seed, "test_accuracy": d["final"]["test_accuracy"],
                          "sparsity": d["final"]["sparsity"], "kernels": d["final"]["nnz"], "biases": biases,
                          "widths": list(widths)})
  return out


_runs = common.runs_of
_acc = common.acc_by_seed


def _per_sparsity(results):
  return common.per_sparsity(results, "sparse", "dense")


def verdict(results) -> common.Verdict:
  for t in results["sparsities"]:
    for s, d in zip(_runs(results, "sparse", t), _runs(results, "dense", t)):
      if d["kernels"] + d["biases"] < s["kernels"] + s["biases"]:  # by construction; checked on the counted numbers
        return common.Verdict("inconclusive", f"{100 * t:g}%, seed {s['seed']}: the dense model has fewer parameters "
                              "than the sparse one has non-zeros")
  return common.combine(list(_per_sparsity(results).values()))


def _counts(runs) -> str:
  return ", ".join(sorted({f"{r['kernels'] + r['biases']} ({r['kernels']} + {r['biases']})" for r in runs}))


def tables(results) -> str:
  per = _per_sparsity(results)
  rows = []
  for t in results["sparsities"]:
    sp, de = _runs(results, "sparse", t), _runs(results, "dense", t)
    a, b = _acc(results, "sparse", t), _acc(results, "dense", t)
    widths = sorted({"-".join(map(str, r["widths"])) for r in de})
    rows.append([f"{100 * t:g}%", ", ".join(sorted({f"{r['sparsity']:.4f}" for r in sp})), _counts(sp),
                 ", ".join(widths), _counts(de),
                 " / ".join(common.pct(a[s]) for s in sorted(a)), " / ".join(common.pct(b[s]) for s in sorted(b)),
                 f"{100 * (common.mean(list(a.values())) - common.mean(list(b.values()))):+.2f}", per[t].verdict])
  return common.table(["target", "measured sparsity (300-100)", "sparse non-zeros (kernels + biases)",
                       "dense hidden widths", "dense params (kernels + biases)", "sparse test acc % (per seed)",
                       "dense test acc %", "mean gap (points)", "verdict"], rows)


def plot(results, path: str) -> None:
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ts = results["sparsities"]
  for arm, color, label in (("sparse", "C0", "LeNet-300-100, gmp (large-sparse)"),
                            ("dense", "C3", "dense MLP, matched size (small-dense)")):
    xs, ys = [], []
    for t in ts:
      runs = _runs(results, arm, t)
      for r in runs:
        ax.plot(r["kernels"] + r["biases"], 100 * r["test_accuracy"], "o", color=color, alpha=0.5)
      xs.append(common.mean([r["kernels"] + r["biases"] for r in runs]))
      ys.append(100 * common.mean([r["test_accuracy"] for r in runs]))
    ax.plot(xs, ys, "-", color=color, label=f"{label}, mean over seeds")
  ax.set_xscale("log")
  ticks = [common.mean([r["kernels"] + r["biases"] for r in _runs(results, "sparse", t)]) for t in ts]
  ax.set_xticks(ticks, [f"{x / 1000:.1f}k\n({100 * t:g}%)" for x, t in zip(ticks, ts)])
  ax.xaxis.set_minor_formatter(plt.NullFormatter())
  ax.set_xlabel("non-zero parameters, kernels + biases (sparsity of the sparse model)")
  ax.set_ylabel("test accuracy %")
  ax.set_title("Large-sparse vs small-dense at equal non-zeros, Fashion-MNIST", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)

