"""The reproductions of record: every testable claim of the pruning papers this library builds on, each run by one
command and given a verdict by a rule stated before the run.

  python -m experiments.reproduce all --workdir=runs/studies [--scale tiny|default|full] [--seeds 0,1,2] [--docs docs]
      [--jobs 2]
  python -m experiments.reproduce <study> --workdir=runs/studies      (one study, same flags)

`--jobs N` runs N studies at once, each in its own process (`python -m experiments.studies <study> ...`, its output
in <workdir>/<study>/log.txt): the studies' engine runs are small enough that one process uses about one core, so
two jobs on two cores halve the elapsed time. The report is written once all have finished.

Each study runs in <workdir>/<study>/ and resumes there (finished pieces are read back). Writes
<workdir>/REPRODUCTIONS.md and <workdir>/<study>.png; `--docs DIR` also writes DIR/REPRODUCTIONS.md and
DIR/reproductions/<study>.png (the committed report: `--docs docs`). A study's wall time is the time spent in it,
summed over the invocations that resumed it.
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Optional, Sequence

from experiments.studies import common
from experiments.studies.common import Context, SCALES, VERDICTS, Verdict

__all__ = ["Context", "SCALES", "STUDIES", "VERDICTS", "Verdict", "load", "reproduce", "run_study"]

STUDIES = (
    "gradual_vs_oneshot",    # 1. Zhu & Gupta 2017
    "sparse_vs_dense",       # 2. Zhu & Gupta 2017: large-sparse beats small-dense
    "global_vs_layerwise",   # 3. global vs uniform magnitude, min_density against layer collapse
    "lth_vs_reinit",         # 4. Frankle & Carbin 2019 against Liu et al. 2019, across learning rates
    "late_rewinding",        # 5. Frankle et al. 2019/2020: late rewinding and the stability probe
    "pai_ratios",            # 6. pruning at init: layer-wise ratios, not positions; collapse on a deep MLP
    "neuroregeneration",     # 7. GraNet: gmp against gmp plus regrowth
    "grokking_tickets",      # 8. Minegishi et al.: lottery tickets accelerate grokking
    "planted_tickets",       # 9. Fischer & Burkholz: Plant 'n' Seek
    "oracle_pruning",        # 10. "Is oracle pruning the true oracle?"
)


def load(name: str):
  if name not in STUDIES:
    raise ValueError(f"study: got {name!r}; accepted values: {', '.join(STUDIES)}")
  return importlib.import_module(f"experiments.studies.{name}")


def _wall_path(ctx: Context, name: str) -> str:
  return ctx.path(name, "wall.json")


def _write_if_changed(path: str, text: str) -> None:
  """Writes `text` to `path` atomically, unless the file already holds it (a resumed study rewrites nothing)."""
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return
  common.write_atomic(path, text)


def _results_path(ctx: Context, name: str) -> str:
  return ctx.path(name, "study_results.json")


def run_study(name: str, ctx: Context, results: Optional[dict] = None) -> dict:
  """Runs (or resumes) one study in <ctx.workdir>/<name>/; returns {name, results, verdict, wall_s, setup}.

  `results` (a finished study's, written to <workdir>/<name>/study_results.json by the process that ran it) skips
  the run: only the verdict and the plot are made here, and no time is added to wall.json."""
  study = load(name)
  sub = dataclasses.replace(ctx, workdir=ctx.path(name))
  os.makedirs(sub.workdir, exist_ok=True)
  if results is not None:
    with open(_wall_path(ctx, name)) as f:
      timing = json.load(f)
    return _entry(name, study, sub, ctx, results, timing)
  started, cpu_started = time.time(), time.process_time()
  results = study.run(sub)
  spent, cpu = time.time() - started, time.process_time() - cpu_started
  wall_path = _wall_path(ctx, name)
  before = {"seconds": 0.0, "cpu_seconds": 0.0}
  if os.path.exists(wall_path):
    with open(wall_path) as f:
      before = json.load(f)
  # CPU time is unknown (None) for a study whose earlier invocations did not record it
  known = before.get("cpu_seconds")
  timing = {"seconds": before["seconds"] + spent, "cpu_seconds": None if known is None else known + cpu}
  with open(wall_path, "w") as f:
    json.dump(timing, f)
  _write_if_changed(_results_path(ctx, name), json.dumps(results))
  return _entry(name, study, sub, ctx, results, timing)


def _entry(name, study, sub, ctx, results, timing) -> dict:
  v = study.verdict(results)
  if v.verdict not in VERDICTS:
    raise ValueError(f"{name}: verdict {v.verdict!r} is not one of {VERDICTS}")
  study.plot(results, ctx.path(name + ".png"))
  return {"name": name, "study": study, "results": results, "verdict": v, "wall_s": timing["seconds"],
          "cpu_s": timing["cpu_seconds"], "setup": study.setup(sub)}


def _minutes(seconds) -> str:
  return "not recorded" if seconds is None else f"{seconds / 60:.1f} min"


def anchor(title: str) -> str:
  """GitHub's anchor of a markdown heading."""
  return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def section(i: int, entry: dict, image: str) -> str:
  s, v = entry["study"], entry["verdict"]
  claim = "\n".join("> " + line for line in s.CLAIM.strip().splitlines())
  return "\n".join([
      f"## {i}. {s.TITLE}", "",
      f"**Papers.** {s.PAPERS}", "",
      "**Claim.**", "", claim, "",
      f"**Setup.** {entry['setup']}", "",
      f"**Rule, stated before the run.** {s.RULE}", "",
      "**Results.**", "",
      s.tables(entry["results"]), "",
      f"![{entry['name']}]({image})", "",
      f"**Verdict: {v.verdict}.** {v.why}", "",
      f"Wall time: {entry['wall_s'] / 60:.1f} min (CPU time {_minutes(entry['cpu_s'])}).", ""])


def report(entries: Sequence[dict], ctx: Context, command: str, image_dir: str = "", elapsed: Optional[float] = None,
           jobs: int = 1) -> str:
  total = sum(e["wall_s"] for e in entries)
  cpu = [e["cpu_s"] for e in entries if e["cpu_s"] is not None]
  cpu = (f"CPU time {sum(cpu) / 60:.1f} min" + ("" if len(cpu) == len(entries) else
                                                f" for the {len(cpu)} studies that recorded it"))
  lines = [
      "# Reproductions of record", "",
      f"Generated {datetime.date.today().isoformat()} by `{command}` (scale `{ctx.scale}`, seeds "
      f"{', '.join(map(str, ctx.seeds))}) on {os.cpu_count()} CPU cores"
      + ("." if elapsed is None else f", in {elapsed / 60:.1f} min elapsed, {jobs} "
         f"stud{'y' if jobs == 1 else 'ies'} at a time (a resumed invocation counts only what it ran or read back).")
      + f" The studies' own times sum to {total / 60:.1f} min of wall time ({cpu}), each summed over the invocations "
      "that resumed it (studies run side by side take longer in wall time, not in CPU time). Every number below was "
      "measured by the studies' own runs in <workdir> (this command reads finished ones back); the published numbers "
      "are quoted from the papers. Verdict rules were written before the runs.",
      "",
      "| # | study | verdict | wall time | CPU time |", "|---|---|---|---|---|"]
  for i, e in enumerate(entries, 1):
    lines.append(f"| {i} | [{e['study'].TITLE}](#{anchor(f'{i}. ' + e['study'].TITLE)}) | {e['verdict'].verdict} | {e['wall_s'] / 60:.1f} min | "
                 f"{_minutes(e['cpu_s'])} |")
  lines.append("")
  for i, e in enumerate(entries, 1):
    lines.append(section(i, e, os.path.join(image_dir, e["name"] + ".png") if image_dir else e["name"] + ".png"))
  return "\n".join(lines)


# Minutes each study took in the run of stop 21 (default scale, under contention): `--jobs` starts the longest first
# so that no long study is left to run alone at the end.
COST = {"lth_vs_reinit": 44, "gradual_vs_oneshot": 36, "late_rewinding": 28, "grokking_tickets": 24,
        "sparse_vs_dense": 24, "global_vs_layerwise": 21, "pai_ratios": 18, "planted_tickets": 15,
        "neuroregeneration": 15, "oracle_pruning": 14}


def _worker_command(name: str, ctx: Context) -> list:
  return [sys.executable, "-m", "experiments.studies", name, f"--workdir={ctx.workdir}", f"--scale={ctx.scale}",
          "--seeds=" + ",".join(map(str, ctx.seeds))]


def _run_parallel(names: Sequence[str], ctx: Context, jobs: int) -> dict:
  """Runs the studies `jobs` at a time, each in its own process; returns {name: results}. Raises RuntimeError naming
  the studies that failed (their logs say why) once every other one has finished."""
  pending, running, results, failed = sorted(names, key=lambda n: -COST.get(n, 0)), {}, {}, []
  while pending or running:
    while pending and len(running) < jobs:
      name = pending.pop(0)
      os.makedirs(ctx.path(name), exist_ok=True)
      log = open(ctx.path(name, "log.txt"), "a")  # pylint: disable=consider-using-with (closed when it ends)
      print(f"=== study {name} started (scale {ctx.scale}, seeds {list(ctx.seeds)}; log {log.name})", flush=True)
      running[name] = (subprocess.Popen(_worker_command(name, ctx), stdout=log, stderr=subprocess.STDOUT), log)
    time.sleep(1.0)
    for name, (proc, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[name]
      if proc.returncode != 0:
        failed.append(name)
        print(f"=== study {name} FAILED (exit {proc.returncode}); see {log.name}", flush=True)
        continue
      with open(_results_path(ctx, name)) as f:
        results[name] = json.load(f)
      print(f"=== study {name} finished", flush=True)
  if failed:
    raise RuntimeError(f"studies failed: {', '.join(failed)}; their logs: "
                       + ", ".join(ctx.path(n, "log.txt") for n in failed))
  return results


def reproduce(names: Sequence[str], ctx: Context, command: str, docs: Optional[str] = None,
              jobs: int = 1) -> list[dict]:
  """Runs the studies (in order, or `jobs` at a time in their own processes), then writes
  <workdir>/REPRODUCTIONS.md (and DIR/REPRODUCTIONS.md with the PNGs under DIR/reproductions/ when `docs` is given)."""
  for n in names:
    load(n)  # every name checked before anything runs
  if jobs < 1:
    raise ValueError(f"--jobs: got {jobs}; accepted values: integers >= 1")
  started = time.time()
  finished = _run_parallel(names, ctx, jobs) if jobs > 1 and len(names) > 1 else {}
  entries = []
  for n in names:
    if n not in finished:
      print(f"=== study {n} (scale {ctx.scale}, seeds {list(ctx.seeds)})", flush=True)
    entries.append(run_study(n, ctx, finished.get(n)))
    v = entries[-1]["verdict"]
    print(f"=== {n}: {v.verdict} ({entries[-1]['wall_s'] / 60:.1f} min): {v.why}", flush=True)
  elapsed = time.time() - started
  print(f"=== {len(names)} studies in {elapsed / 60:.1f} min elapsed ({jobs} at a time)", flush=True)
  os.makedirs(ctx.workdir, exist_ok=True)
  with open(ctx.path("REPRODUCTIONS.md"), "w") as f:
    f.write(report(entries, ctx, command, elapsed=elapsed, jobs=jobs))
  if docs:
    os.makedirs(os.path.join(docs, "reproductions"), exist_ok=True)
    for e in entries:
      shutil.copyfile(ctx.path(e["name"] + ".png"), os.path.join(docs, "reproductions", e["name"] + ".png"))
    with open(os.path.join(docs, "REPRODUCTIONS.md"), "w") as f:
      f.write(report(entries, ctx, command, image_dir="reproductions", elapsed=elapsed, jobs=jobs))
  return entries
