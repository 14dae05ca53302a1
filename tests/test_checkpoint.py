"""Checkpoints: exact round trip of the whole state (masks with None leaves), retention, and SIGKILL resume."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import sparsejax as sj
from sparsejax import checkpoint, optim, parallel, train
from sparsejax.config_validation import validate
from tiny_dataset import TinyDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(mesh, steps=3):
  """A TrainState after a few GMP steps: sparse masks, None masks for biases, moments, a step counter."""
  config = validate({"model": {"name": "mlp"}, "data": {"name": "tiny"},
                     "training": {"num_steps": 10, "batch_size": 8, "optimizer": "adam", "learning_rate": 0.01}})
  data = TinyDataset()
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.7, "begin_step": 0, "end_step": 2, "update_every": 1})
  tx = sj.sparsify(optim.make_optimizer(config.training, 10), pruner)
  model = train.create_model("mlp", 10)
  state = train.create_train_state(config, model, data, jax.random.PRNGKey(1), tx, mesh)
  step_fn = train.make_train_step(model, tx, mesh)
  return train.train_loop(state, step_fn, data, 8, mesh, 0, steps), (config, model, data, tx)


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("data_parallel", [pytest.param(1, marks=pytest.mark.slow), 8])
def test_round_trip_keeps_values_masks_and_shardings(tmp_path, data_parallel):
  if jax.device_count() < data_parallel:
    pytest.skip("needs 8 host devices")
  mesh = parallel.create_mesh({"data_parallel": data_parallel})
  state, (config, model, data, tx) = _state(mesh)
  masks = sj.get_masks(state.opt_state)
  assert any(m is None for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None))
  assert 0 < sj.summary(masks)["total"]["sparsity"] < 1
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 3, state)
  target = train.create_train_state(config, model, data, jax.random.PRNGKey(9), tx, mesh)  # other values
  step, restored = checkpoint.restore_latest(manager, target)
  assert step == 3
  _assert_bitwise_equal(state, restored)
  masks_back = sj.get_masks(restored.opt_state)
  assert jax.tree.structure(masks_back, is_leaf=lambda x: x is None) == jax.tree.structure(
      masks, is_leaf=lambda x: x is None)
  for x in jax.tree.leaves(restored):
    assert x.sharding.is_equivalent_to(parallel.replicated(mesh), x.ndim)


def test_keeps_the_last_checkpoints_and_restores_nothing_when_empty(tmp_path):
  mesh = parallel.create_mesh(None)
  state, _ = _state(mesh, steps=1)
  manager = checkpoint.create_manager(str(tmp_path), keep=2)
  assert checkpoint.restore_latest(manager, state)[0] == 0
  for step in (1, 2, 3, 4):
    checkpoint.save(manager, step, state)
  assert manager.all_steps() == [3, 4] and checkpoint.latest_step(str(tmp_path)) == 4
  with pytest.raises(ValueError, match="does not match"):
    checkpoint.restore(manager, 4, {"other": state.params})


def test_an_async_save_holds_the_state_it_was_given_while_donating_steps_run(tmp_path):
  """Issue 10: saves in the background. The train step donates the state while the save is in flight; the checkpoint
  must still hold the saved step's values (its digest, taken before the save, is verified on restore) and the next
  save must wait for it."""
  mesh = parallel.create_mesh(None)
  state, _ = _state(mesh, steps=1)
  saved = jax.tree.map(np.array, state)
  step = jax.jit(lambda s: jax.tree.map(lambda x: x + 1 if x.dtype == np.float32 else x, s), donate_argnums=0)
  manager = checkpoint.create_manager(str(tmp_path), keep=3, async_save=True)
  checkpoint.save(manager, 1, state)
  for _ in range(3):  # donated steps while the files are written
    state = step(state)
  checkpoint.save(manager, 2, state)
  checkpoint.finish(manager)
  assert manager.all_steps() == [1, 2]
  restored = checkpoint.restore_verified(manager, 1, state)
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, np.asarray(b))
  later = checkpoint.restore_verified(manager, 2, state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(later)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  checkpoint.finish(manager, close=True)


def _launch(workdir, num_steps):
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mnist1d_mlp_gmp.py", f"--workdir={workdir}",
         f"--config.training.num_steps={num_steps}", "--config.training.checkpoint_every=100",
         "--config.training.eval_every=0", "--config.training.log_every=100", "--config.training.progress=lines"]
  # The same environment for every run: same devices, same XLA flags, so the same compiled programs.
  return subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _final_state(workdir):
  """The newest checkpoint of `workdir`, restored without knowing its structure (arrays keyed by tree path)."""
  manager = checkpoint.create_manager(str(workdir), keep=2)
  step = manager.latest_step()
  return step, manager.restore(step, args=ocp.args.StandardRestore())


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
  num_steps = 2000
  killed = _launch(tmp_path / "killed", num_steps)
  deadline = time.time() + 240
  while checkpoint.latest_step(str(tmp_path / "killed")) is None:
    assert killed.poll() is None and time.time() < deadline, killed.stdout.read()[-3000:]
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert killed.returncode == -signal.SIGKILL
  first = checkpoint.latest_step(str(tmp_path / "killed"))
  assert first < num_steps, "the run finished before it could be killed; raise num_steps"
  resumed, reference = _launch(tmp_path / "killed", num_steps), _launch(tmp_path / "reference", num_steps)
  outputs = [proc.communicate(timeout=300)[0] for proc in (resumed, reference)]
  for proc, out in zip((resumed, reference), outputs):
    assert proc.returncode == 0, out[-3000:]
  logged = [line.split()[1] for line in outputs[0].splitlines() if line.startswith("step ")]
  assert logged[0] == f"{first + 100}/{num_steps}", logged  # the resumed run started after its checkpoint
  step_a, a = _final_state(tmp_path / "killed")
  step_b, b = _final_state(tmp_path / "reference")
  assert step_a == step_b == num_steps
  _assert_bitwise_equal(a, b)  # params, batch_stats, opt_state with masks and pruner arrays, rng
  results_a = json.load(open(tmp_path / "killed" / "results.json"))
  results_b = json.load(open(tmp_path / "reference" / "results.json"))
  assert results_a["final"] == results_b["final"] and results_a["layers"] == results_b["layers"]
  steps_a = [r["step"] for r in map(json.loads, open(tmp_path / "killed" / "metrics.jsonl"))]
  assert steps_a == list(range(100, num_steps + 1, 100))
