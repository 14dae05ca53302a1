"""What every study of the reproductions of record shares: its context (workdir, scale, seeds), resumable results,
engine runs, and the verdict rules.

A study is a module of `experiments.studies` with:
  NAME    the name `python -m experiments.reproduce NAME` runs;
  TITLE   the section title;
  PAPERS  the papers, one string;
  CLAIM   the claim, quoted from the paper;
  RULE    the rule that decides the verdict, stated before any run;
  setup(ctx) -> str           the setup at ctx's scale, in words;
  run(ctx) -> dict            the results (JSON-able), every unit of work resumable through `ctx.cached` or
                              `ctx.engine`;
  verdict(results) -> Verdict;
  tables(results) -> str      markdown: our numbers;
  plot(results, path) -> None one PNG.

Scales: `tiny` (the test's: seconds, one seed, numbers meaningless), `default` (the committed report: the full set
under about 90 minutes on 2 CPU cores) and `full` (the papers' sizes where a CPU allows; hours).
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Callable, Mapping, NamedTuple, Sequence

SCALES = ("tiny", "default", "full")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")

ORDERING_RULE = (
    "For each seed s the gap d_s = (claimed better) - (claimed worse) is computed; the spread is the larger of the "
    "two arms' standard deviations over seeds. **Reproduced** when d_s > 0 on every seed and the mean gap exceeds "
    "the spread; **not reproduced** when d_s <= 0 on every seed; **inconclusive** otherwise (mixed signs, or a gap "
    "within the spread).")


class Verdict(NamedTuple):
  verdict: str  # one of VERDICTS
  why: str


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file and a rename: a killed study never leaves half a result."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


@dataclasses.dataclass(frozen=True)
class Context:
  workdir: str
  scale: str = "default"
  seeds: tuple = (0, 1, 2)

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"--scale: got {self.scale!r}; accepted values: {', '.join(SCALES)}")

  def pick(self, tiny, default, full=None):
    """The value for this scale (`full` defaults to `default`)."""
    return {"tiny": tiny, "default": default, "full": default if full is None else full}[self.scale]

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def cached(self, name: str, fn: Callable[[], object]):
    """fn()'s JSON-able result, kept in <workdir>/<name>.json: computed once, read back when the study resumes."""
    path = self.path(name + ".json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    value = fn()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, json.dumps(value))
    return value

  def engine(self, name: str, config) -> dict:
    """One engine run (`sparsejax.train.train_and_evaluate`) in <workdir>/<name>/; a finished run is read back, an
    interrupted one resumes from its checkpoint. Returns its results.json."""
    from sparsejax import train  # pylint: disable=g-import-not-at-top (the engine only when a study runs)
    config.training.progress = "none"
    return train.train_and_evaluate(config, self.path(name))


def quiet(config, num_steps: int, seed: int):
  """The engine config of a study run: `num_steps` steps, `seed` for init, data order and the pruner, eval at the end
  only, one checkpoint at the middle and the end."""
  config.seed = seed
  if "seed" in config.sparsity:
    config.sparsity.seed = seed
  t = config.training
  t.num_steps = num_steps
  t.eval_every = 0
  t.log_every = max(num_steps // 4, 1)
  t.checkpoint_every = max(num_steps // 2, 1)
  t.keep_checkpoints = 1
  t.progress = "none"
  return config


def engine_grid(ctx: Context, steps: int, sparsities, arms, config_fn, record) -> dict:
  """One engine run per (sparsity, arm, seed), named <arm>_s<sparsity>_seed<seed>: {"steps", "sparsities", "seeds",
  "runs": [{"arm", "target", "seed", **record(results.json)}]}. config_fn(arm, target, seed, steps) -> config."""
  out = {"steps": steps, "sparsities": list(sparsities), "seeds": list(ctx.seeds), "runs": []}
  for target in sparsities:
    for arm in arms:
      for seed in ctx.seeds:
        r = ctx.engine(f"{arm}_s{target:g}_seed{seed}", config_fn(arm, target, seed, steps))
        out["runs"].append({"arm": arm, "target": target, "seed": seed, **record(r)})
  return out


def runs_of(results: dict, arm: str, target: float, key: str = "arm") -> list:
  """The run records of one arm (results["runs"][i][key] == arm) at one target sparsity."""
  return [r for r in results["runs"] if r[key] == arm and r["target"] == target]


def acc_by_seed(results: dict, arm: str, target: float, key: str = "arm") -> dict:
  """{seed: final test accuracy} of one arm at one target sparsity."""
  return {r["seed"]: r["test_accuracy"] for r in runs_of(results, arm, target, key)}


def per_sparsity(results: dict, better: str, worse: str, key: str = "arm") -> dict:
  """{target: the ORDERING_RULE verdict of arm `better` against arm `worse` on final test accuracy}."""
  return {t: ordering(acc_by_seed(results, better, t, key), acc_by_seed(results, worse, t, key), f"{100 * t:g}%")
          for t in results["sparsities"]}


def plot_arms(results: dict, arms, title: str, path: str, key: str = "arm") -> None:
  """Test accuracy against target sparsity: one dot per seed and a line through the seeds' mean, per (arm, color,
  label) of `arms`."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ts = results["sparsities"]
  for arm, color, label in arms:
    for t in ts:
      acc = acc_by_seed(results, arm, t, key)
      ax.plot([100 * t] * len(acc), [100 * a for a in acc.values()], "o", color=color, alpha=0.5)
    ax.plot([100 * t for t in ts], [100 * mean(list(acc_by_seed(results, arm, t, key).values())) for t in ts], "-",
            color=color, label=label)
  ax.set_xlabel("sparsity %")
  ax.set_ylabel("test accuracy %")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def mean(xs: Sequence[float]) -> float:
  return sum(xs) / len(xs)


def spread(xs: Sequence[float]) -> float:
  """Standard deviation over seeds (0 for one seed)."""
  return statistics.stdev(xs) if len(xs) > 1 else 0.0


def ordering(better: Mapping, worse: Mapping, what: str, unit: float = 100.0, suffix: str = " points") -> Verdict:
  """The verdict of ORDERING_RULE for "`better` beats `worse`" ({seed: value}, higher is better; pass negated
  values for losses). `what` names the claim in the reason; values are shown times `unit`."""
  seeds = sorted(set(better) & set(worse))
  if not seeds:
    return Verdict("inconclusive", f"{what}: no seed has both arms")
  d = [better[s] - worse[s] for s in seeds]
  sp = max(spread([better[s] for s in seeds]), spread([worse[s] for s in seeds]))
  gaps = ", ".join(f"{unit * x:+.2f}" for x in d)
  why = f"{what}: gap per seed {gaps}{suffix}; mean {unit * mean(d):+.2f}, spread {unit * sp:.2f}"
  if all(x > 0 for x in d) and mean(d) > sp:
    return Verdict("reproduced", why)
  if all(x <= 0 for x in d):
    return Verdict("not reproduced", why)
  return Verdict("inconclusive", why)


def combine(parts: Sequence[Verdict], how: str = "all") -> Verdict:
  """One verdict from several sub-claims: reproduced when all are, not reproduced when any is not (how='all'); the
  reasons are joined."""
  why = "; ".join(p.why for p in parts)
  kinds = [p.verdict for p in parts]
  if all(k == "reproduced" for k in kinds):
    return Verdict("reproduced", why)
  if any(k == "not reproduced" for k in kinds):
    return Verdict("not reproduced", why)
  return Verdict("inconclusive", why)


def pct(x) -> str:
  return "" if x is None else f"{100 * x:.1f}"


def table(head: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A markdown table; cells are str()'d."""
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(out)


def pyplot():
  """matplotlib's pyplot on the Agg backend (no display)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
