"""The main job of `make run`: MNIST-1D lottery tickets against the random-mask control.

  python -m experiments.quickstart --workdir=runs/quickstart [--levels 12] [--seed 0]

Trains configs/mnist1d_mlp_lth.py: the dense MLP, then 12 levels of iterative magnitude pruning (20% of the remaining
weights per level, rewound to step 0), each level also trained with a random mask of the same per-layer counts.
After every level it prints the table so far, with the published numbers (Greydanus 2020) beside ours, and writes
runs/quickstart/ (results.json, levels.json, metrics.jsonl, lottery.png). Rerunning resumes; a finished run only prints.
"""
from __future__ import annotations

import argparse

from configs import mnist1d_mlp_lth
from experiments import published
from sparsejax import lottery


def level_table(levels, reference=published.MNIST1D_LTH) -> str:
  """Markdown table: per level, ticket and random-mask best/final test accuracy, and the published numbers."""

  def fmt(x):
    return "" if x is None else f"{100 * x:.1f}"

  lines = ["| level | sparsity | ticket best | ticket final | random_mask best | random_mask final | published ticket"
           " | published random |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for lv in levels:
    ctrl = lv.get("controls", {}).get("random_mask", {})
    pub_t = published.nearest(reference["dense"] if lv["level"] == 0 else reference["ticket"], lv["sparsity"])
    pub_r = published.nearest(reference["random_mask"], lv["sparsity"]) if lv["level"] else None
    lines.append(f"| {lv['level']} | {lv['sparsity']:.3f} | {fmt(lv['best_test_accuracy'])} | "
                 f"{fmt(lv['test_accuracy'])} | {fmt(ctrl.get('best_test_accuracy'))} | "
                 f"{fmt(ctrl.get('test_accuracy'))} | {fmt(pub_t)} | {fmt(pub_r)} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/quickstart")
  parser.add_argument("--levels", type=int, default=12)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  config = mnist1d_mlp_lth.get_config()
  config.sparsity.levels = args.levels
  config.seed = args.seed
  config.training.progress = "none"
  results = lottery.run_lottery(config, args.workdir, on_level=lambda levels: print(level_table(levels), flush=True),
                                reference=published.plot_points())
  print(f"\nwrote {args.workdir}/results.json, levels.json, metrics.jsonl, lottery.png "
        f"({results['wall_seconds']:.0f} s of training)")
  print(level_table(results["levels"]))
  return results


if __name__ == "__main__":
  main()
