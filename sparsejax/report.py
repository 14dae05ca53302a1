"""What a run leaves in its workdir: config.json, metrics.jsonl (and TensorBoard event files beside it when
`config.training.tensorboard` asks), results.json, a plot; and the progress display.

Only the files named here are ever written; a workdir that holds anything else must already carry our config.json,
so a typo in `--workdir` cannot overwrite someone's files. With several processes (multi-host) only process 0 writes
files and prints; every process still reads them, so all of them take the same resume decisions.

Every path goes through `etils.epath`, so a workdir may be any filesystem it supports: a local directory, or a
`gs://bucket/run` (s3://, az://, hf://) URI, used as that remote path (never as a local folder named `gs:`). Remote
filesystems need their fsspec package (gcsfs for gs://) or TensorFlow's tf.io.gfile; local ones need nothing more.

>>> import tempfile
>>> workdir = tempfile.mkdtemp()
>>> with MetricsWriter(workdir, resume_step=0) as writer:
...   writer.write({"step": 10, "train_loss": 0.5})
>>> read_metrics(workdir)
[{'step': 10, 'train_loss': 0.5}]
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Optional

from etils import epath
import jax
import ml_collections

from sparsejax import config_validation, distributions, tensorboard_events

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_PREFIX = tensorboard_events.EVENTS_PREFIX  # TensorBoard event files beside metrics.jsonl (training.tensorboard)
RESULTS_FILE = "results.json"
PLOT_FILE = "training.png"
# Fields that do not change what is trained (display, bookkeeping, and the device count: the batch and its order are
# the same, only float reduction order differs), so a run may be resumed with other values.
_RESUMABLE_DIFFERENCES = ("training.progress", "training.log_every", "training.eval_every", "training.eval_batch_size",
                          "training.checkpoint_every", "training.keep_checkpoints",
                          "training.async_checkpoint", "training.tensorboard", "mesh.data_parallel",
                          "mesh.multihost", "sparsity.levels")  # more IMP levels extend a run; finished ones stay
# Fields added to the config after runs were written: a config.json without them resumes when they are at these
# defaults (which change nothing about what is trained).
_ADDED_LATER = {"init_from": None, **{f"posttrain.{k}": v for k, v in config_validation.POSTTRAIN_DEFAULTS.items()}}


def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a.b": leaf} of a nested dict (a config as config.json holds it)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON values (tuples become lists), as written to config.json."""
  return json.loads(config.to_json_best_effort())


def finite_json(obj: Any) -> Any:
  """`obj` with every NaN or infinite float replaced by None: JSON has no NaN, and a reader must not parse one."""
  if isinstance(obj, float):
    return obj if math.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: finite_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [finite_json(v) for v in obj]
  return obj


def is_writer() -> bool:
  """Whether this process writes files and progress (process 0 of a multi-host run)."""
  return jax.process_index() == 0


def is_remote(path: Any) -> bool:
  """Whether `path` is a URI of a remote filesystem (`gs://...`, `s3://...`: a `scheme://` prefix)."""
  return "://" in os.fspath(path)


def as_path(path: Any) -> epath.Path:
  """`path` (a str, os.PathLike or epath.Path) as an `epath.Path`: a local path as it is, a URI as that remote path."""
  return epath.Path(path)


def write_file(path: Any, text: str) -> None:
  """Writes `text` to `path` so that a reader (or a killed run) never sees half of it; on every process that calls it.

  A local file is written beside it, then renamed over it. A remote one is written directly: an object store
  (gs://, s3://) publishes an object only when its upload is complete, and has no rename (it copies).
  """
  path = as_path(path)
  if is_remote(path):
    path.write_text(text)
    return
  tmp = as_path(f"{os.fspath(path)}.tmp")
  tmp.write_text(text)
  tmp.replace(path)


def write_json(path: Any, obj: Any) -> None:
  """Writes `obj` to `path` atomically (process 0 only)."""
  if not is_writer():
    return
  write_file(path, json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Any) -> Optional[dict]:
  """The JSON object at `path`, or None when the file is missing."""
  path = as_path(path)
  if not path.exists():
    return None
  return json.loads(path.read_text())


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds an earlier run of this same config; writes nothing.

  Returns:
    True to resume, False for a new run (a missing or empty workdir).

  Raises:
    ValueError: the workdir holds other files but no config.json of ours, or a config.json of a different config.
  """
  path = as_path(workdir)
  if not path.is_dir() or not any(True for _ in path.iterdir()):
    return False
  previous = read_json(path / CONFIG_FILE)
  if previous is None:
    raise ValueError(f"--workdir {workdir} is not empty and holds no {CONFIG_FILE} of an earlier run; choose an "
                     "empty or new directory")
  old, new = flatten(previous), flatten(config_to_dict(config))
  changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in _RESUMABLE_DIFFERENCES
                   and not (k not in old and k in _ADDED_LATER and new.get(k) == _ADDED_LATER[k]))
  if changed:
    details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
    raise ValueError(f"--workdir {workdir} holds a run of a different config ({details}); use a new workdir to "
                     "run this config")
  return True


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates `workdir` and writes config.json there (process 0 only)."""
  if is_writer():
    as_path(workdir).mkdir(parents=True, exist_ok=True)
  write_json(as_path(workdir) / CONFIG_FILE, config_to_dict(config))


def read_results(workdir: str) -> Optional[dict]:
  return read_json(as_path(workdir) / RESULTS_FILE)


def write_results(workdir: str, results: dict) -> None:
  write_json(as_path(workdir) / RESULTS_FILE, results)


def read_metrics(workdir: str) -> list[dict]:
  """The records of `workdir/metrics.jsonl` ([] when there is none)."""
  path = as_path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  with path.open() as f:
    # A run killed mid-write can leave a partial last line; it is dropped here and rewritten on resume.
    records = []
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
    return records


class MetricsWriter:
  """Appends one JSON object per logged step to metrics.jsonl (and, with `tensorboard`, its numeric fields to
  TensorBoard event files in the same directory: `sparsejax.tensorboard_events`).

  On resume from checkpoint step k the records after k (written by the killed run past its last checkpoint) are
  dropped first, so every step appears once and the file matches an uninterrupted run. A remote file (gs://) is
  rewritten whole at every record instead: object stores cannot append (gcsfs opens 'a' as 'w') and show nothing of an
  upload before it closes.
  """

  def __init__(self, workdir: str, resume_step: int, tensorboard: bool = False):
    self.path = as_path(workdir) / METRICS_FILE
    self.previous = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
    self._file = None
    self._lines = None  # remote: every line so far
    self._events = None
    if not is_writer():
      return
    if tensorboard:  # event files beside metrics.jsonl, holding the same records (`config.training.tensorboard`)
      self._events = tensorboard_events.EventWriter(workdir, self.previous)
    lines = [json.dumps(r) + "\n" for r in self.previous]
    if is_remote(self.path):
      self._lines = lines
      self.path.write_text("".join(lines))
      return
    with self.path.open("w") as f:
      f.writelines(lines)
    self._file = self.path.open("a")

  def write(self, record: dict) -> None:
    if self._events is not None:
      self._events.write(record)
    line = json.dumps(finite_json(record), allow_nan=False) + "\n"
    if self._file is not None:
      self._file.write(line)
      self._file.flush()
    elif self._lines is not None:
      self._lines.append(line)
      self.path.write_text("".join(self._lines))

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._events is not None:
      self._events.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class Progress:
  """A tqdm bar on a terminal, plain lines otherwise (`config.training.progress`: auto | bar | lines | none)."""

  def __init__(self, mode: str, start_step: int, num_steps: int, desc: str = "train"):
    if mode == "auto":
      mode = "bar" if sys.stderr.isatty() else "lines"
    if not is_writer():
      mode = "none"
    self.mode, self.num_steps = mode, num_steps
    self._bar = None
    if mode == "bar":
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=num_steps, initial=start_step, desc=desc, dynamic_ncols=True)

  def step(self) -> None:
    if self._bar is not None:
      self._bar.update(1)

  def log(self, record: dict) -> None:
    """Shows loss, accuracy and sparsity of a metrics record (and test accuracy and a language model's perplexities
    when it has them)."""
    keys = ("train_loss", "train_accuracy", "sparsity", "test_accuracy", "validation_perplexity", "test_perplexity")
    shown = {k: record[k] for k in keys if k in record}
    if self._bar is not None:
      self._bar.set_postfix({k.replace("train_", ""): f"{v:.4f}" for k, v in shown.items()}, refresh=False)
    elif self.mode == "lines":
      text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
      print(f"step {record['step']:>7}/{self.num_steps}  {text}", flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def make_results(config, step: int, test: dict, summary: dict, wall_seconds: float, levels=(),
                 split: str = "test") -> dict:
  """The results.json dict of DESIGN.md.

  Args:
    config: the validated config (names of algorithm, dataset, model).
    step: the final step.
    test: {"loss", "accuracy"} on `split` (and "perplexity" for a language model: final.test_perplexity).
    summary: `sj.summary(masks, params)` (sparsity and nnz counted from the param arrays).
    wall_seconds: training time, summed over resumed segments.
    levels: per-level records of iterative methods ([] otherwise).
    split: the split `test` was measured on.
  """
  total = summary["total"]
  final = {"step": step, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
           "sparsity": total["sparsity"], "nnz": total["nnz"], "prunable_params": total["prunable_params"]}
  if "perplexity" in test:
    final["test_perplexity"] = test["perplexity"]
  if split != "test":
    final["eval_split"] = split
  layers = {path: {"shape": list(layer["shape"]), "sparsity": layer["sparsity"], "nnz": layer["nnz"]}
            for path, layer in summary["layers"].items()}
  return {"algorithm": config.sparsity.algorithm, "dataset": config.data.name, "model": config.model.name,
          "status": "finished", "wall_seconds": wall_seconds, "final": final, "layers": layers, "levels": list(levels),
          "layer_collapse": collapsed_layers(layers, config.sparsity.get("min_density", 0.0))}


def collapsed_layers(layers: dict, min_density: float = 0.0) -> list[str]:
  """Layers of results.json that collapsed: no weight left, or fewer than ceil(min_density * size) (counted from the
  arrays). A collapsed layer cuts the network (Tanaka et al. 2020); results.json lists them and the run warns."""
  return [path for path, layer in layers.items()
          if distributions.collapsed(layer["nnz"], math.prod(layer["shape"]), min_density)]


def format_results(results: dict) -> str:
  """A short text table of results.json: the final numbers and the per-layer sparsity."""
  def num(v):
    return "n/a" if v is None else f"{v:.4f}"

  final = results["final"]
  name = f"{results['algorithm']} {results['model']} on {results['dataset']}"
  if results.get("status") == "diverged":
    name += (f": DIVERGED at step {results['diverged_step']}; last finite checkpoint "
             f"{results.get('last_finite_checkpoint')}")
  if final is None:
    return name
  lines = [f"{name}: step {final['step']}, test accuracy {num(final['test_accuracy'])}, test loss "
           f"{num(final['test_loss'])}, "
           + (f"test perplexity {num(final['test_perplexity'])}, " if "test_perplexity" in final else "")
           + f"sparsity {num(final['sparsity'])} ({final['nnz']}/{final['prunable_params']} "
           f"weights kept), {results['wall_seconds']:.1f} s"]
  width = max([len(p) for p in results["layers"]] + [5])
  lines.append(f"{'layer':<{width}}  {'shape':>16}  {'nnz':>10}  {'sparsity':>8}")
  for path, layer in results["layers"].items():
    shape = "x".join(map(str, layer["shape"]))
    lines.append(f"{path:<{width}}  {shape:>16}  {layer['nnz']:>10}  {layer['sparsity']:8.4f}")
  if results.get("layer_collapse"):
    lines.append(f"warning: layer collapse (no weight left, or under the min_density floor): "
                 f"{', '.join(results['layer_collapse'])}")
  for level in results.get("levels", []):
    lines.append(f"level {level['level']}: sparsity {level['sparsity']:.4f}  test accuracy "
                 f"{level['test_accuracy']:.4f}  best {level['best_test_accuracy']:.4f} at step {level['best_step']}")
  return "\n".join(lines)


def plot_run(workdir: str, records: list[dict], layers: dict) -> str:
  """training.png: test accuracy and sparsity against step, and the final sparsity of each layer."""
  if not is_writer():
    return ""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4))
  evals = [r for r in records if "test_accuracy" in r]
  ax.plot([r["step"] for r in evals], [r["test_accuracy"] for r in evals], "o-", color="C0", label="test accuracy")
  ax.set_xlabel("step")
  ax.set_ylabel("test accuracy", color="C0")
  ax.set_ylim(0, 1.02)
  twin = ax.twinx()
  logged = [r for r in records if "sparsity" in r]
  twin.plot([r["step"] for r in logged], [r["sparsity"] for r in logged], color="C1", label="sparsity")
  twin.set_ylabel("sparsity", color="C1")
  twin.set_ylim(-0.02, 1.02)
  ax.set_title("test accuracy and sparsity")
  names = list(layers)
  bars.barh(range(len(names)), [layers[n]["sparsity"] for n in names], color="C1")
  bars.set_yticks(range(len(names)), names, fontsize=7)
  bars.invert_yaxis()
  bars.set_xlim(0, 1)
  bars.set_xlabel("sparsity")
  bars.set_title("final sparsity per layer")
  fig.tight_layout()
  path = as_path(workdir) / PLOT_FILE
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  plt.close(fig)
  return os.fspath(path)
