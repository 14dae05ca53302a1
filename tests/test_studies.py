"""The reproductions of record (experiments/studies): every study end to end at scale `tiny`, the report, resuming,
and the verdict rule."""
import os
import subprocess
import sys
import types

import pytest

from experiments import reproduce, studies
from experiments.studies import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(root):
  out = {}
  for d, _, fs in os.walk(root):
    for f in fs:
      if f.endswith(".json") and f != "wall.json":
        p = os.path.join(d, f)
        out[p] = os.stat(p).st_mtime_ns
  return out


@pytest.mark.slow  # ten studies of engine runs and training loops: make test-slow, which CI runs too
@pytest.mark.parametrize("name", studies.STUDIES)
def test_study_runs_end_to_end_at_tiny_scale_and_resumes(name, tmp_path):
  ctx = studies.Context(str(tmp_path), "tiny", (0,))
  entries = studies.reproduce([name], ctx, f"test {name}")
  (e,) = entries
  assert e["verdict"].verdict in common.VERDICTS and e["verdict"].why
  study = e["study"]
  for field in ("TITLE", "PAPERS", "CLAIM", "RULE"):
    assert getattr(study, field).strip(), field
  text = (tmp_path / "REPRODUCTIONS.md").read_text()
  assert f"## 1. {study.TITLE}" in text and f"**Verdict: {e['verdict'].verdict}.**" in text
  assert study.RULE in text and "|---" in text
  assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  before = _files(tmp_path / name)
  assert before, "a study keeps its results in its workdir"
  again = studies.reproduce([name], ctx, f"test {name}")
  assert _files(tmp_path / name) == before  # nothing recomputed or rewritten
  assert again[0]["verdict"] == e["verdict"]


def _fake(name, verdict, value):
  m = types.SimpleNamespace(
      NAME=name, TITLE=f"Claim {name}", PAPERS="A paper", CLAIM="a quote\non two lines", RULE="a rule",
      setup=lambda ctx: f"setup at {ctx.scale}",
      run=lambda ctx: ctx.cached("r", lambda: {"v": value}),
      verdict=lambda r: common.Verdict(verdict, f"v={r['v']}"),
      tables=lambda r: common.table(["v"], [[r["v"]]]))

  def plot(results, path):
    plt = common.pyplot()
    fig, _ = plt.subplots()
    fig.savefig(path)
    plt.close(fig)
  m.plot = plot
  return m


def test_report_lists_every_study_with_its_verdict_and_writes_docs(tmp_path, monkeypatch):
  fakes = {"a": _fake("a", "reproduced", 1), "b": _fake("b", "not reproduced", 2)}
  monkeypatch.setattr(studies, "STUDIES", ("a", "b"))
  monkeypatch.setattr(studies, "load", lambda n: fakes[n])
  ctx = studies.Context(str(tmp_path / "w"), "tiny", (0, 1, 2))
  studies.reproduce(["a", "b"], ctx, "cmd", docs=str(tmp_path / "docs"))
  text = (tmp_path / "docs" / "REPRODUCTIONS.md").read_text()
  assert "| 1 | [Claim a](#1-claim-a) | reproduced | " in text
  assert "| 2 | [Claim b](#2-claim-b) | not reproduced |" in text
  assert "> a quote\n> on two lines" in text
  assert "![b](reproductions/b.png)" in text and (tmp_path / "docs" / "reproductions" / "b.png").exists()
  assert "seeds 0, 1, 2" in text and "`cmd`" in text
  assert "![a](a.png)" in (tmp_path / "w" / "REPRODUCTIONS.md").read_text()


@pytest.mark.parametrize("better, worse, expected", [
    ({0: 0.9, 1: 0.91, 2: 0.92}, {0: 0.8, 1: 0.81, 2: 0.82}, "reproduced"),
    ({0: 0.8, 1: 0.81, 2: 0.82}, {0: 0.9, 1: 0.91, 2: 0.92}, "not reproduced"),
    ({0: 0.9, 1: 0.80, 2: 0.92}, {0: 0.8, 1: 0.81, 2: 0.82}, "inconclusive"),  # mixed signs
    ({0: 0.801, 1: 0.901, 2: 0.701}, {0: 0.8, 1: 0.9, 2: 0.7}, "inconclusive"),  # every seed, within the spread
])
def test_ordering_rule(better, worse, expected):
  v = common.ordering(better, worse, "x")
  assert v.verdict == expected
  assert v.why.startswith("x: gap per seed")


def test_ordering_rule_by_hand():
  v = common.ordering({0: 0.5, 1: 0.7}, {0: 0.4, 1: 0.4}, "c")
  # gaps 0.1 and 0.3: mean 0.2; spreads: stdev(0.5, 0.7) = 0.1414, stdev(0.4, 0.4) = 0
  assert v.why == "c: gap per seed +10.00, +30.00 points; mean +20.00, spread 14.14"
  assert v.verdict == "reproduced"


@pytest.mark.parametrize("args, message", [
    (["nosuch", "--workdir", "w"], "invalid choice: 'nosuch'"),
    (["all", "--workdir", "w", "--scale", "huge"], "invalid choice: 'huge'"),
    (["all", "--workdir", "w", "--seeds", "a,b"], "--seeds: got 'a,b'"),
    (["all", "--workdir", "w", "--jobs", "0"], "--jobs: got 0"),
])
def test_bad_arguments_exit_2_with_a_message(args, message, tmp_path):
  p = subprocess.run([sys.executable, "-m", "experiments.reproduce"] + args, cwd=tmp_path, capture_output=True,
                     text=True, env={**os.environ, "PYTHONPATH": ROOT})
  assert p.returncode == 2, p.stderr
  assert message in p.stderr and "Traceback" not in p.stderr
  assert os.listdir(tmp_path) == []


def _fake_workers(monkeypatch, fail=()):
  """Worker processes that write a fake study's results and time, as `python -m experiments.studies` does; those
  in `fail` exit 1."""
  def command(name, ctx):
    code = ("import json, os, sys, time; d = sys.argv[1]; time.sleep(0.5)\n"
            f"if {name in fail}: print('boom'); sys.exit(1)\n"
            "json.dump({'v': 1}, open(os.path.join(d, 'study_results.json'), 'w'))\n"
            "json.dump({'seconds': 30.0, 'cpu_seconds': 20.0}, open(os.path.join(d, 'wall.json'), 'w'))")
    return [sys.executable, "-c", code, ctx.path(name)]
  monkeypatch.setattr(studies, "_worker_command", command)


def test_jobs_run_studies_in_their_own_processes_and_report_them(tmp_path, monkeypatch):
  fakes = {n: _fake(n, "reproduced", 1) for n in ("a", "b", "c")}
  monkeypatch.setattr(studies, "STUDIES", tuple(fakes))
  monkeypatch.setattr(studies, "load", lambda n: fakes[n])
  _fake_workers(monkeypatch)
  ctx = studies.Context(str(tmp_path / "w"), "tiny", (0,))
  entries = studies.reproduce(["a", "b", "c"], ctx, "cmd", jobs=2)
  assert [e["name"] for e in entries] == ["a", "b", "c"]  # the report keeps the study order
  assert all(e["results"] == {"v": 1} and e["wall_s"] == 30.0 and e["cpu_s"] == 20.0 for e in entries)
  text = (tmp_path / "w" / "REPRODUCTIONS.md").read_text()
  assert "2 studies at a time" in text and "| 3 | [Claim c](#3-claim-c) | reproduced | 0.5 min | 0.3 min |" in text
  for n in fakes:
    assert (tmp_path / "w" / n / "log.txt").exists() and (tmp_path / "w" / f"{n}.png").exists()


def test_a_failed_job_is_named_with_its_log_after_the_others_finish(tmp_path, monkeypatch):
  fakes = {n: _fake(n, "reproduced", 1) for n in ("a", "b", "c")}
  monkeypatch.setattr(studies, "STUDIES", tuple(fakes))
  monkeypatch.setattr(studies, "load", lambda n: fakes[n])
  _fake_workers(monkeypatch, fail=("a",))
  ctx = studies.Context(str(tmp_path / "w"), "tiny", (0,))
  with pytest.raises(RuntimeError, match=r"studies failed: a; their logs: .*a/log.txt"):
    studies.reproduce(["a", "b", "c"], ctx, "cmd", jobs=2)
  assert "boom" in (tmp_path / "w" / "a" / "log.txt").read_text()
  assert (tmp_path / "w" / "c" / "study_results.json").exists()  # the others ran to the end
  assert not (tmp_path / "w" / "REPRODUCTIONS.md").exists()


def test_every_study_is_registered_by_name():
  for name in studies.STUDIES:
    assert name in reproduce.EXPERIMENTS
  assert "all" in reproduce.EXPERIMENTS
