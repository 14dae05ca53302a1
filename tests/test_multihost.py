"""Multi-host for real: 2 processes x 4 CPU devices over `jax.distributed` on 127.0.0.1, through the launcher.

Each process runs `python -m sparsejax.launch` with `config.mesh.multihost=True`, the JAX_* variables, and an 8-way
FSDP mesh (every param split over both processes). The runs are compared with one process holding 8 devices: the
same mesh shape, the same program, so the masks must be identical and the params equal up to the order in which the
cross-process all-reduce adds (gloo between processes, in-process otherwise). A 2-process run killed after a
checkpoint and resumed must end bit for bit where the uninterrupted 2-process run ends.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 16
FLAGS = [f"--config.training.num_steps={STEPS}", "--config.training.batch_size=64",
         "--config.training.eval_batch_size=200", "--config.training.checkpoint_every=5",
         "--config.training.log_every=5", "--config.training.eval_every=8", "--config.sparsity.begin_step=0",
         "--config.sparsity.end_step=12", "--config.sparsity.update_every=4", "--config.mesh.fsdp=-1",
         "--config.mesh.fsdp_min_size=0", "--config.training.progress=none"]

# `make test` runs the gmp comparison (about a minute: two launches); rigl and the kill/resume run in `make test-slow`.

def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, extra=None) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=REPO, **(extra or {}))
  return env


def _launch(algorithm: str, workdir, processes: int, extra_env=None) -> list[subprocess.CompletedProcess]:
  """Runs the launcher in `processes` processes (8 devices in all); returns their CompletedProcess."""
  argv = [sys.executable, "-m", "sparsejax.launch", f"--config=configs/mnist1d_mlp_{algorithm}.py",
          f"--workdir={workdir}", *FLAGS]
  if processes == 1:
    return [subprocess.run(["timeout", "-k", "10", "300", *argv], cwd=REPO, env=_env(8, extra_env),
                           capture_output=True, text=True)]
  port = _free_port()
  procs = []
  for i in range(processes):
    env = _env(8 // processes, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes),
                                "JAX_PROCESS_ID": str(i), **(extra_env or {})})
    # bounded: once jax.distributed is up, JAX handles SIGTERM itself; -k sends SIGKILL 10 s later
    procs.append(subprocess.Popen(["timeout", "-k", "10", "300", *argv, "--config.mesh.multihost=True"], cwd=REPO,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  out = []
  for p in procs:
    stdout, stderr = p.communicate()
    out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return out


def _final_state(workdir) -> dict:
  """The last checkpoint's arrays (restored in this process, on the host), by path."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  path = os.path.join(ckpt, str(step), "default")
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    meta = checkpointer.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree,
                          is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"))
    restored = checkpointer.restore(path, target)
  flat = {}
  for kp, x in jax.tree_util.tree_flatten_with_path(restored)[0]:
    flat["/" + "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in kp)] = np.asarray(x)
  return flat


def _results(workdir) -> dict:
  results = json.load(open(os.path.join(workdir, "results.json")))
  results.pop("wall_seconds")
  return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  done = {}

  def get(algorithm, processes):
    key = (algorithm, processes)
    if key not in done:
      workdir = root / f"{algorithm}_{processes}"
      procs = _launch(algorithm, workdir, processes)
      for p in procs:
        assert p.returncode == 0, p.stderr[-3000:]
      done[key] = workdir
    return done[key]

  return get


@pytest.mark.parametrize("algorithm", ["gmp", pytest.param("rigl", marks=pytest.mark.slow)])
def test_two_processes_train_what_one_process_with_8_devices_trains(algorithm, runs):
  two, one = runs(algorithm, 2), runs(algorithm, 1)
  a, b = _final_state(two), _final_state(one)
  assert a.keys() == b.keys()
  masks = [k for k in a if "/masks/" in k]
  assert masks, sorted(a)
  for k in masks:  # exact: selection moves only integer counts between processes
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  for k in a:
    if "/params/" in k and k.startswith("/params"):
      # 16 Adam/SGD steps; the only difference is the order of the cross-process sums (float32 rounding, ~1e-7
      # relative per step, amplified by at most the steps' Lipschitz growth): 1e-4 is far above it and far below any
      # real difference (a wrong shard or a missing all-reduce changes weights by 1e-2 or more).
      np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=k)
  ra, rb = _results(two), _results(one)
  assert ra["layers"] == rb["layers"]  # nnz counted from the arrays: exact
  assert ra["final"]["test_accuracy"] == pytest.approx(rb["final"]["test_accuracy"], abs=0.01)


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_run(runs, tmp_path):
  workdir = tmp_path / "run"
  killed = _launch("gmp", workdir, 2, {"SPARSEJAX_FAULT_KILL_AFTER_STEPS": "12"})  # checkpoints 5 and 10
  # timeout reports a child killed by SIGKILL as 137; a process whose peer died first may instead stop with an error
  assert any(p.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) for p in killed), [p.stderr[-2000:] for p in killed]
  resumed = _launch("gmp", workdir, 2)
  for p in resumed:
    assert p.returncode == 0, p.stderr[-3000:]
  ref = runs("gmp", 2)
  a, b = _final_state(workdir), _final_state(ref)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert _results(workdir)["final"] == _results(ref)["final"]
