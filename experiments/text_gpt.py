"""The GPT table of the README: configs/text_gpt.py trained with each method, one after another, then a table.

  python -m experiments.text_gpt --workdir=runs/text_gpt [--methods dense,gmp,rigl,nm24,heads] [flags for every run]

Each method runs `python -m experiments.train --config=configs/text_gpt.py:METHOD --workdir=WORKDIR/METHOD` (a rerun
resumes or reprints a finished run). The table gives, from each results.json: validation and test perplexity at the
end, the sparsity and the FLOPs per token left (both counted from the arrays), heads kept, and the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from configs import text_gpt


def table(workdir: str, methods) -> str:
  rows = ["| method | val. perplexity | test perplexity | sparsity | FLOPs/token left | heads kept | wall time |",
          "|---|---|---|---|---|---|---|"]
  for m in methods:
    path = os.path.join(workdir, m, "results.json")
    if not os.path.exists(path):
      rows.append(f"| {m} | not run | | | | | |")
      continue
    r = json.load(open(path))
    metrics = [json.loads(line) for line in open(os.path.join(workdir, m, "metrics.jsonl"))]
    val = [x["validation_perplexity"] for x in metrics if "validation_perplexity" in x]
    flops = r.get("flops_per_token", {})
    units = r.get("units")
    heads = f"{units['kept']}/{units['units']}" if units else "all"
    rows.append(f"| {m} | {val[-1]:.2f} | {r['final']['test_perplexity']:.2f} | {r['final']['sparsity']:.3f} | "
                f"{flops.get('fraction', float('nan')):.3f} | {heads} | "
                f"{r['wall_seconds'] / 60:.1f} min |")
  return "\n".join(rows)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--methods", default=",".join(text_gpt.METHODS))
  args, extra = ap.parse_known_args(argv)
  methods = args.methods.split(",")
  bad = [m for m in methods if m not in text_gpt.METHODS]
  if bad:
    print(f"error: --methods: {bad} not in {text_gpt.METHODS}", file=sys.stderr)
    return 2
  for m in methods:
    cmd = [sys.executable, "-m", "experiments.train", f"--config=configs/text_gpt.py:{m}",
           f"--workdir={os.path.join(args.workdir, m)}", "--config.training.progress=lines", *extra]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd)
    if rc:
      return rc
  print(table(args.workdir, methods))
  return 0


if __name__ == "__main__":
  sys.exit(main())
