"""Faults a run must survive, through the launcher in subprocesses: SIGKILL at several points then a rerun equals the
uninterrupted run (final state bit for bit, metrics.jsonl but for wall time); damaged newest checkpoints fall back to
the one before; a save that fails keeps the old ones; a diverged run stops with status "diverged".

Kill points are set through environment variables read by `sparsejax.train._fault_point` (the process SIGKILLs itself
the Nth time it passes the point): after N train steps, or inside a checkpoint save (its digest written, the
checkpoint not)."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

SPARSITY = {
    "gmp": {"algorithm": "gmp", "target": 0.8, "begin_step": 2, "end_step": 20, "update_every": 3},
    "rigl": {"algorithm": "rigl", "target": 0.8, "end_step": 20, "update_every": 3, "distribution": "erk"},
    "set": {"algorithm": "set", "target": 0.8, "end_step": 20, "update_every": 3},
    "snip": {"algorithm": "snip", "target": 0.8, "distribution": "global"},
    "imp": {"algorithm": "imp", "levels": 2, "prune_fraction": 0.3, "rewind": "step", "rewind_step": 4,
            "control": "random_mask"},
}


def _config(tmp_path, algorithm, extra=""):
  fields = "\n".join(f"  c.sparsity.{k} = {v!r}" for k, v in SPARSITY[algorithm].items())
  path = tmp_path / f"{algorithm}.py"
  path.write_text(f"""from configs import default

def get_config():
  c = default.get_config()
  c.model.name = "mlp"
  c.model.widths = (32,)
  c.data.num_samples = 400
  c.training.num_steps = 30
  c.training.batch_size = 32
  c.training.eval_batch_size = 100
  c.training.log_every = 4
  c.training.eval_every = 10
  c.training.checkpoint_every = 7
  c.training.keep_checkpoints = 3
  c.training.progress = "none"
  c.training.learning_rate = 1e-2
{fields}
{extra}
  return c
""")
  return str(path)


def _launch(config, workdir, env=None, extra=()):
  argv = [sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={workdir}", *extra]
  environ = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run(argv, cwd=REPO, env=environ, capture_output=True, text=True, timeout=300)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"} for line in f]


def _results(workdir):
  results = json.load(open(os.path.join(workdir, "results.json")))
  results.pop("wall_seconds")
  for level in results.get("levels", []):
    level.pop("wall_seconds", None)
  return results


def _final_digest(workdir, sub="checkpoints"):
  sums = os.path.join(workdir, f"{sub}.sha256")
  last = max(int(n.split(".")[0]) for n in os.listdir(sums) if n.endswith(".json"))
  return json.load(open(os.path.join(sums, f"{last}.json")))["sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run of each algorithm, made once."""
  root = tmp_path_factory.mktemp("reference")
  runs = {}

  def get(algorithm):
    if algorithm not in runs:
      workdir = root / algorithm
      proc = _launch(_config(root, algorithm), workdir)
      assert proc.returncode == 0, proc.stderr[-3000:]
      runs[algorithm] = str(workdir)
    return runs[algorithm]

  return get


KILLS = [  # (algorithm, environment variable, count)
    ("gmp", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 7),    # right after the step-7 checkpoint
    ("gmp", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 17),   # mid-run, three steps after a checkpoint
    ("gmp", "SPARSEJAX_FAULT_KILL_IN_SAVE", 2),        # inside the second save
    ("rigl", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 12),
    ("set", "SPARSEJAX_FAULT_KILL_IN_SAVE", 3),
    ("snip", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 16),
    ("imp", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 40),   # inside level 1's ticket
    ("imp", "SPARSEJAX_FAULT_KILL_AFTER_STEPS", 30),   # at the end of level 0, before its result is written
]


@pytest.mark.parametrize("algorithm,point,count", KILLS, ids=[f"{a}-{p.split('_')[-2].lower()}-{c}" for a, p, c in KILLS])
def test_sigkill_then_rerun_equals_the_uninterrupted_run(algorithm, point, count, reference, tmp_path):
  workdir = tmp_path / "run"
  config = _config(tmp_path, algorithm)
  killed = _launch(config, workdir, {point: str(count)})
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  resumed = _launch(config, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  ref = reference(algorithm)
  assert _results(workdir) == _results(ref)
  assert _metrics(workdir) == _metrics(ref)
  if algorithm == "imp":
    for level in ("00_ticket", "01_ticket", "01_random_mask", "02_ticket"):
      sub = os.path.join("levels", level)
      assert _final_digest(workdir / sub) == _final_digest(os.path.join(ref, sub)), level
  else:
    assert _final_digest(workdir) == _final_digest(ref)  # the final state, bit for bit


def _damage(path, how):
  files = sorted((os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs), key=os.path.getsize)
  big = files[-1]  # the largest file holds the array data
  if how == "truncated":
    with open(big, "r+b") as f:
      f.truncate(os.path.getsize(big) // 2)
  elif how == "bitflip":
    with open(big, "r+b") as f:
      f.seek(os.path.getsize(big) // 2)
      byte = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([byte[0] ^ 0x10]))
  else:
    shutil.rmtree(path)


@pytest.mark.parametrize("how", ["truncated", "bitflip", "deleted"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(how, reference, tmp_path):
  workdir = tmp_path / "run"
  # Synchronous saves: with async ones a kill one step after step 21's save may come before its files are written
  # (then 21 is a temporary directory, removed on resume: no damage to read). The restore path is the same for both.
  config = _config(tmp_path, "gmp", "  c.training.async_checkpoint = False")
  killed = _launch(config, workdir, {"SPARSEJAX_FAULT_KILL_AFTER_STEPS": "22"})  # checkpoints 7, 14, 21
  assert killed.returncode == -signal.SIGKILL
  _damage(workdir / "checkpoints" / "21", how)
  resumed = _launch(config, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  if how != "deleted":
    assert "checkpoint 21" in resumed.stderr and "trying the checkpoint before it" in resumed.stderr
  ref = reference("gmp")
  assert _results(workdir) == _results(ref) and _metrics(workdir) == _metrics(ref)
  assert _final_digest(workdir) == _final_digest(ref)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_failed_save_keeps_the_previous_checkpoints(tmp_path):
  workdir = tmp_path / "run"
  config = _config(tmp_path, "gmp")
  killed = _launch(config, workdir, {"SPARSEJAX_FAULT_KILL_AFTER_STEPS": "8"})
  assert killed.returncode == -signal.SIGKILL
  (workdir / "checkpoints").chmod(0o555)
  failed = _launch(config, workdir)
  (workdir / "checkpoints").chmod(0o755)
  assert failed.returncode == 2 and "could not save checkpoint 14" in failed.stderr
  assert "Traceback" not in failed.stderr and sorted(os.listdir(workdir / "checkpoints")) == ["7"]


def test_a_failed_save_in_process_keeps_the_previous_checkpoints(tmp_path, monkeypatch):
  """The same with the failure made by hand (root can write a read-only directory): orbax raises inside save."""
  import jax.numpy as jnp
  from sparsejax import checkpoint
  manager = checkpoint.create_manager(str(tmp_path), keep=3)
  checkpoint.save(manager, 1, {"w": jnp.ones(3)})

  def broken(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(manager, "save", broken)
  with pytest.raises(checkpoint.SaveError, match="could not save checkpoint 2.*No space left"):
    checkpoint.save(manager, 2, {"w": jnp.zeros(3)})
  monkeypatch.undo()
  assert manager.all_steps() == [1]
  assert checkpoint.restore_latest(manager, {"w": jnp.zeros(3)})[1]["w"].tolist() == [1.0, 1.0, 1.0]


def test_divergence_stops_with_status_diverged_and_a_finite_checkpoint(tmp_path):
  workdir = tmp_path / "run"
  config = _config(tmp_path, "gmp", extra="  c.training.checkpoint_every = 1\n  c.training.learning_rate = 1e30")
  proc = _launch(config, workdir)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "training diverged at step" in proc.stderr and "Traceback" not in proc.stderr
  text = (workdir / "results.json").read_text()
  assert "NaN" not in text and "Infinity" not in text
  results = json.loads(text)
  assert results["status"] == "diverged" and results["diverged_step"] >= 1
  last = results["last_finite_checkpoint"]
  assert last is not None and last < results["diverged_step"] and results["final"]["step"] == last
  assert results["final"]["sparsity"] == pytest.approx(results["final"]["sparsity"])  # a number, counted
  import jax
  import numpy as np
  from sparsejax import checkpoint
  manager = checkpoint.create_manager(str(workdir), keep=100)
  for step in manager.all_steps():  # every checkpoint kept is finite
    restored = manager.restore(step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating))
  again = _launch(config, workdir)  # a diverged run is not trained again
  assert again.returncode == 3 and json.loads((workdir / "results.json").read_text()) == results


def test_sigterm_saves_a_checkpoint_then_the_rerun_equals_the_uninterrupted_run(reference, tmp_path):
  """Preemption: SIGTERM after step 9 (checkpoints every 7 steps) makes the run save checkpoint 10 and exit 143;
  the rerun resumes there and ends bit for bit where the uninterrupted run does."""
  workdir = tmp_path / "run"
  config = _config(tmp_path, "gmp")
  stopped = _launch(config, workdir, {"SPARSEJAX_FAULT_TERM_AFTER_STEPS": "9"})
  assert stopped.returncode == 143, stopped.stderr[-2000:]
  assert "preempted (SIGTERM) after step 10: checkpoint 10 saved" in stopped.stderr
  assert "Traceback" not in stopped.stderr
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())[-1] == 10
  resumed = _launch(config, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  ref = reference("gmp")
  assert _results(workdir) == _results(ref) and _metrics(workdir) == _metrics(ref)
  assert _final_digest(workdir) == _final_digest(ref)
