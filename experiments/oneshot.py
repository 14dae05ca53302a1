"""One-shot pruning after training (issue 12): magnitude, Wanda and SparseGPT on three trained models, with and
without a short recovery, against the ordering Wanda's paper reports.

  python -m experiments.reproduce oneshot --workdir=runs/oneshot [--dense_gpt=runs/text_gpt/dense]
      [--recovery_steps N] [--models gpt,lenet300,mnist1d_mlp] [--settings s50,...]

Models: the zoo GPT on pydocs (configs/text_gpt.py, dense; `--dense_gpt` reuses a finished workdir of it, else it is
trained under <workdir>/gpt/dense), LeNet-300-100 on Fashion-MNIST (configs/fashion_mnist_lenet300_dense.py) and the
MNIST-1D MLP (configs/mnist1d_mlp_dense.py), each trained dense with its own config first. Every trained model is
then pruned by each method at each setting: 50%, 60%, 70% unstructured (uniform per layer), 70% with OWL's layer
sparsities (Yin et al. 2023), 2:4 and 4:8; once without recovery and, for the uniform settings (all but OWL), once
with recovery 'sparse': the kept weights fine-tuned with the masks fixed for `--recovery_steps` steps (default 100 for
the GPT, 300 for the MLPs) at a tenth of the model's training learning rate (the engine's fine-tuning rate), cosine to
0. Calibration: the engine's default 8 training batches. One in-process `train.train_and_evaluate` per run, each in its own workdir
(<workdir>/<model>/<method>_<setting>_<recovery>/), so an interrupted reproduction resumes and a finished run is
read back. A setting that a model's shapes refuse (4:8 where a layer's inputs do not divide into groups of 8: LeNet's
300 and the MNIST-1D MLP's 500) is reported as n/a with the reason, nothing written.

The checks, stated before the numbers were seen (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large
Language Models", Tables 2-3; Yin et al. 2023), each given a verdict computed from the pruned (unrecovered) numbers:
  (a) SparseGPT and Wanda each beat magnitude at every setting;
  (b) the gap, magnitude minus the better of Wanda and SparseGPT (perplexity; for the MLPs in accuracy points, the
      better one minus magnitude), is widest at 70% among the unstructured settings (50, 60, 70%) and widest at 2:4
      among the settings at 50% sparsity (50% unstructured, 2:4, 4:8);
  (c) OWL beats uniform at 70% for Wanda.
Writes <workdir>/report.md (a table per model with the published LLaMA-2-7B numbers beside it for reference, the
checks and their verdicts), <workdir>/oneshot.png and <workdir>/summary.json. XLA executables are cached in
<workdir>/.jax_cache.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import time
from typing import NamedTuple, Optional, Sequence

import jax

from experiments import published
from sparsejax import report, train, validation

METHODS = ("magnitude", "wanda", "sparsegpt")
RECOVERY_STEPS = {"gpt": 100, "mlp": 300}  # defaults of --recovery_steps: what fits the whole run in ~30 min on 2 cores


class Setting(NamedTuple):
  name: str           # as the tables show it
  slug: str           # in workdir names
  target: float
  distribution: str
  granularity: str


SETTINGS = (Setting("50%", "s50", 0.5, "uniform", "unstructured"),
            Setting("60%", "s60", 0.6, "uniform", "unstructured"),
            Setting("70%", "s70", 0.7, "uniform", "unstructured"),
            Setting("70% owl", "owl70", 0.7, "owl", "unstructured"),
            Setting("2:4", "nm2_4", 0.5, "uniform", "2:4"),
            Setting("4:8", "nm4_8", 0.5, "uniform", "4:8"))


class Model(NamedTuple):
  name: str
  title: str
  config: str         # module under configs/
  metric: str         # "perplexity" (lower is better) or "accuracy"


MODELS = (Model("gpt", "GPT (nano, 4 scanned blocks) on pydocs", "text_gpt", "perplexity"),
          Model("lenet300", "LeNet-300-100 on Fashion-MNIST", "fashion_mnist_lenet300_dense", "accuracy"),
          Model("mnist1d_mlp", "MNIST-1D MLP", "mnist1d_mlp_dense", "accuracy"))


def dense_config(model: Model, workdir: str, dense_steps: Optional[int] = None):
  config = importlib.import_module(f"configs.{model.config}").get_config()
  config.training.progress = "none"
  if config.data.name == "mnist1d":  # generated once (seconds) and cached, not again for every run
    config.data.data_dir = os.path.join(os.path.abspath(workdir), "data")
  if dense_steps is not None:  # smoke tests: a shorter dense run, every schedule scaled with it
    config.training.num_steps = dense_steps
    config.training.warmup_steps = min(config.training.warmup_steps, dense_steps // 10)
    config.training.eval_every = config.training.checkpoint_every = dense_steps
  return config


def run_config(model: Model, workdir: str, init_from: str, method: str, setting: Setting, recovery: str,
               steps: int):
  """The config of one post-training run: the model's dense config pruned from `init_from`."""
  config = dense_config(model, workdir)
  lr = config.training.learning_rate
  config.init_from = init_from
  pt = config.posttrain
  pt.method, pt.target, pt.distribution, pt.granularity, pt.recovery = (method, setting.target, setting.distribution,
                                                                        setting.granularity, recovery)
  training = config.training
  training.num_steps = steps
  training.learning_rate = lr * training.lr_decay_factor  # the engine's fine-tuning rate: a tenth of the peak
  training.lr_schedule, training.warmup_steps = "cosine", 0
  training.eval_every = training.checkpoint_every = training.log_every = 0  # at the end only
  training.keep_checkpoints = 1
  return config


def _metrics(m: Optional[dict], metric: str) -> Optional[float]:
  return None if m is None else m[metric]


def run_all(workdir: str, models: Sequence[Model], recovery_steps: dict, dense_gpt: Optional[str] = None,
            dense_steps: Optional[int] = None, methods: Sequence[str] = METHODS,
            settings: Sequence[Setting] = SETTINGS) -> dict:
  """Trains (or reads back) every run; returns {model name: {"dense": results, "runs": {(method, setting slug,
  recovery): results or {"na": reason}}}}."""
  out, started = {}, time.time()
  for model in models:
    model_started = time.time()
    if model.name == "gpt" and dense_gpt:
      done = report.read_results(dense_gpt)
      if not done or done.get("status") != "finished":
        raise SystemExit(f"error: --dense_gpt: {dense_gpt!r} holds no finished run (results.json with status "
                         "'finished'); leave the flag out to train the dense GPT under the workdir")
      dense_dir, dense = dense_gpt, done
    else:
      dense_dir = os.path.join(workdir, model.name, "dense")
      dense = train.train_and_evaluate(dense_config(model, workdir, dense_steps), dense_dir)
    print(f"[{model.name}] dense: test {model.metric} {_fmt(dense['final'].get('test_' + model.metric), model)} "
          f"({time.time() - started:.0f} s so far)", flush=True)
    runs = {}
    for setting in settings:
      for recovery in ("none", "sparse") if setting.distribution == "uniform" else ("none",):
        for method in methods:
          name = f"{method}_{setting.slug}_{recovery}"
          config = run_config(model, workdir, dense_dir, method, setting, recovery, recovery_steps[model.name])
          t0 = time.time()
          try:
            results = train.train_and_evaluate(config, os.path.join(workdir, model.name, name))
          except validation.ConfigError as e:
            if not str(e).startswith("config.posttrain.granularity:"):
              raise
            # a setting the model's shapes refuse (checked before anything is written)
            runs[(method, setting.slug, recovery)] = {"na": str(e)}
            print(f"[{model.name}] {name}: n/a", flush=True)
            continue
          runs[(method, setting.slug, recovery)] = results
          pt = results["posttrain"]
          print(f"[{model.name}] {name}: pruned {_fmt(_metrics(pt['pruned'], model.metric), model)}, recovered "
                f"{_fmt(_metrics(pt['recovered'], model.metric), model)}, sparsity {results['final']['sparsity']:.4f} "
                f"({time.time() - t0:.0f} s; {time.time() - started:.0f} s so far)", flush=True)
    out[model.name] = {"dense": dense, "dense_dir": dense_dir, "runs": runs, "seconds": time.time() - model_started}
  return out


def _fmt(x, model: Model) -> str:
  if x is None:
    return "-"
  return f"{x:.2f}" if model.metric == "perplexity" else f"{100 * x:.1f}"


def _value(runs: dict, model: Model, method: str, slug: str, recovery: str = "none", phase: str = "pruned"):
  r = runs.get((method, slug, recovery))
  if r is None or "na" in r:
    return None
  return _metrics(r["posttrain"][phase], model.metric)


def table(model: Model, entry: dict, settings: Sequence[Setting], methods: Sequence[str]) -> str:
  """Rows method x setting; pruned and recovered test perplexity (GPT) or accuracy % (MLPs), dense first, and the
  published LLaMA-2-7B perplexities (Sun et al. 2023) where the paper has the setting."""
  runs = entry["runs"]
  what = "test perplexity" if model.metric == "perplexity" else "test accuracy %"
  lines = [f"| method | setting | pruned {what} | recovered {what} | sparsity | LLaMA-2-7B (published ppl.) |",
           "|---|---|---:|---:|---:|---:|",
           f"| dense | | {_fmt(entry['dense']['final'].get('test_' + model.metric), model)} | | 0.000 | "
           f"{published.WANDA_LLAMA2_7B['dense']:.2f} |"]
  for setting in settings:
    for method in methods:
      r = runs.get((method, setting.slug, "none"))
      if r is None:
        continue
      pub = published.WANDA_LLAMA2_7B.get((method, setting.name))
      pub = f"{pub:.2f}" if pub is not None else ""
      if "na" in r:
        lines.append(f"| {method} | {setting.name} | n/a | n/a | | {pub} |")
        continue
      rec = _value(runs, model, method, setting.slug, "sparse", "recovered")
      lines.append(f"| {method} | {setting.name} | {_fmt(_value(runs, model, method, setting.slug), model)} | "
                   f"{_fmt(rec, model)} | {r['final']['sparsity']:.3f} | {pub} |")
  return "\n".join(lines)


def _better(a: float, b: float, model: Model) -> bool:
  return a < b if model.metric == "perplexity" else a > b


def gaps(model: Model, runs: dict, settings: Sequence[Setting]) -> dict:
  """{setting name: magnitude minus the better of Wanda and SparseGPT} (perplexity), or the better one minus
  magnitude in accuracy points; settings with a missing number left out."""
  out = {}
  for s in settings:
    mag, others = _value(runs, model, "magnitude", s.slug), [_value(runs, model, m, s.slug) for m in
                                                              ("wanda", "sparsegpt")]
    if mag is None or None in others:
      continue
    out[s.name] = mag - min(others) if model.metric == "perplexity" else 100 * (max(others) - mag)
  return out


def checks(model: Model, entry: dict, settings: Sequence[Setting]) -> list[str]:
  """The verdicts of checks (a), (b), (c) on one model's pruned numbers."""
  runs, lines = entry["runs"], []
  fails, done = [], 0
  for s in settings:
    mag = _value(runs, model, "magnitude", s.slug)
    for m in ("wanda", "sparsegpt"):
      v = _value(runs, model, m, s.slug)
      if mag is None or v is None:
        continue
      done += 1
      if not _better(v, mag, model):
        fails.append(f"{m} at {s.name} ({_fmt(v, model)} against magnitude {_fmt(mag, model)})")
  verdict = "not measured" if not done else ("HOLDS" if not fails else "FAILS")
  lines.append(f"- (a) Wanda and SparseGPT beat magnitude at every setting: **{verdict}** ({done - len(fails)} of "
               f"{done} comparisons)" + (f"; not at: {'; '.join(fails)}" if fails else ""))
  g = gaps(model, runs, settings)
  unit = "" if model.metric == "perplexity" else " points"
  shown = ", ".join(f"{k}: {v:+.2f}{unit}" for k, v in g.items())
  parts, statuses = [], []
  for group, want in ((("50%", "60%", "70%"), "70%"), (("50%", "2:4", "4:8"), "2:4")):
    have = {k: g[k] for k in group if k in g}
    if want not in have or len(have) < 2:
      statuses.append("not measured")
      parts.append(f"widest at {want} among {', '.join(group)}: not measured")
      continue
    widest = max(have, key=have.get)
    statuses.append("holds" if widest == want else "fails")
    parts.append(f"widest at {want} among {', '.join(have)}: {statuses[-1]} (widest at {widest})")
  verdict = "FAILS" if "fails" in statuses else ("HOLDS" if set(statuses) == {"holds"} else "not measured")
  lines.append(f"- (b) the gap is widest at 70% and at 2:4: **{verdict}** ({'; '.join(parts)}); gaps: {shown}")
  owl, uni = _value(runs, model, "wanda", "owl70"), _value(runs, model, "wanda", "s70")
  if owl is None or uni is None:
    lines.append("- (c) OWL beats uniform at 70% for Wanda: **not measured**")
  else:
    lines.append(f"- (c) OWL beats uniform at 70% for Wanda: **{'HOLDS' if _better(owl, uni, model) else 'FAILS'}** "
                 f"(OWL {_fmt(owl, model)}, uniform {_fmt(uni, model)})")
  return lines


def plot(summary: dict, models: Sequence[Model], settings: Sequence[Setting], methods: Sequence[str],
         path: str) -> None:
  """oneshot.png: per model, the pruned (filled circles) and recovered (open squares) metric of each method at each
  setting, dense as a line."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.2), squeeze=False)
  for ax, model in zip(axes[0], models):
    entry = summary[model.name]
    xs = range(len(settings))
    for i, method in enumerate(methods):
      for recovery, phase, style in (("none", "pruned", "o"), ("sparse", "recovered", "s")):
        ys = [_value(entry["runs"], model, method, s.slug, recovery, phase) for s in settings]
        ys = [math.nan if y is None else (y if model.metric == "perplexity" else 100 * y) for y in ys]
        ax.plot([x + 0.12 * (i - 1) for x in xs], ys, style, color=f"C{i}", markersize=6,  # settings are categories
                label=f"{method} ({'pruned' if recovery == 'none' else 'recovered'})",
                alpha=1.0 if recovery == "none" else 0.5, fillstyle="full" if recovery == "none" else "none")
    dense = entry["dense"]["final"].get("test_" + model.metric)
    if dense is not None:
      ax.axhline(dense if model.metric == "perplexity" else 100 * dense, color="k", lw=1, ls=":", label="dense")
    ax.set_xticks(list(xs), [s.name for s in settings])
    ax.set_title(model.title, fontsize=9)
    ax.set_ylabel("test perplexity (log)" if model.metric == "perplexity" else "test accuracy %")
    if model.metric == "perplexity":
      ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def oneshot(workdir: str, recovery_steps_gpt: int = RECOVERY_STEPS["gpt"],
            recovery_steps_mlp: int = RECOVERY_STEPS["mlp"],
            dense_gpt: Optional[str] = None, models: Optional[Sequence[str]] = None,
            methods: Sequence[str] = METHODS, settings: Optional[Sequence[str]] = None,
            dense_steps: Optional[int] = None, compile_cache: bool = True) -> dict:
  """The reproduction in `workdir` (resuming): every run, then report.md, oneshot.png and summary.json.

  Args:
    models, settings, methods: subsets by name (`MODELS[*].name`, `SETTINGS[*].slug`, `METHODS`); None: all.
    dense_steps: train the dense models for this many steps instead of their configs' (smoke tests).
    compile_cache: keep XLA executables in <workdir>/.jax_cache unless a cache directory is configured already.
  """
  started = time.time()
  if compile_cache and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # many small kernels, the same every run
  chosen = [m for m in MODELS if models is None or m.name in models]
  unknown = set(models or ()) - {m.name for m in MODELS}
  unknown |= set(settings or ()) - {s.slug for s in SETTINGS}
  unknown |= set(methods) - set(METHODS)
  if unknown:
    raise SystemExit(f"error: unknown models, settings or methods {sorted(unknown)}; models: "
                     f"{[m.name for m in MODELS]}, settings: {[s.slug for s in SETTINGS]}, methods: {list(METHODS)}")
  picked = [s for s in SETTINGS if settings is None or s.slug in settings]
  steps = {"gpt": recovery_steps_gpt, "lenet300": recovery_steps_mlp, "mnist1d_mlp": recovery_steps_mlp}
  summary = run_all(workdir, chosen, steps, dense_gpt, dense_steps, methods, picked)
  doc = ["# One-shot pruning after training: magnitude, Wanda, SparseGPT", "",
         "Each model trained dense with its config, then pruned in one shot (`config.posttrain`, 8 calibration "
         "batches) per method and setting; \"pruned\" is the test number right after pruning, \"recovered\" after "
         "a short recovery 'sparse' (kept weights fine-tuned with the masks fixed, at a tenth of the training learning "
         "rate, cosine; steps under each table). Sparsity is counted from the "
         "weight arrays. The last column is Wanda's Table 2-3 (Sun et al. 2023): LLaMA-2-7B WikiText perplexity, for "
         "the ordering only (a 7B model against ours).", "",
         "The checks, stated before the numbers were seen, judged on the pruned numbers:", "",
         "- (a) SparseGPT and Wanda each beat magnitude at every setting;",
         "- (b) the gap (magnitude minus the better of the two in perplexity; the better one minus magnitude in "
         "accuracy points) is widest at 70% among 50/60/70% and widest at 2:4 among 50%/2:4/4:8;",
         "- (c) OWL's layer sparsities beat uniform at 70% for Wanda.", ""]
  for model in chosen:
    entry = summary[model.name]
    own = sum(r["wall_seconds"] for r in entry["runs"].values() if "na" not in r)
    if entry["dense_dir"].startswith(os.path.join(workdir, "")):
      own += entry["dense"]["wall_seconds"]
    doc += [f"## {model.title}", "", f"Dense: `{entry['dense_dir']}`; recovery: {steps[model.name]} steps; the runs' "
            f"own wall time (results.json; a dense run reused from elsewhere not counted): {own:.0f} s; "
            f"{entry['seconds']:.0f} s in this invocation.", "",
            table(model, entry, picked, methods), "", *checks(model, entry, picked), ""]
    nas = sorted({r["na"] for r in entry["runs"].values() if "na" in r})
    if nas:
      doc += ["n/a: " + "; ".join(nas), ""]
  doc += [f"Wall time of this invocation: {time.time() - started:.0f} s (runs already finished are read back).", ""]
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(doc))
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({name: {"dense": e["dense"]["final"], "dense_dir": e["dense_dir"],
                      "runs": [{"method": m, "setting": s, "recovery": r,
                                **({"na": v["na"]} if "na" in v else {"final": v["final"],
                                                                      "posttrain": v["posttrain"]})}
                               for (m, s, r), v in e["runs"].items()]}
               for name, e in summary.items()}, f, indent=1)
  plot(summary, chosen, picked, methods, os.path.join(workdir, "oneshot.png"))
  print("\n".join(doc), flush=True)
  return summary
