"""Data parallelism: meshes, batch sharding, and the 8-device step against the 1-device step."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import sparsejax as sj
from sparsejax import optim, parallel, steps, train
from sparsejax.config_validation import validate
from tiny_dataset import TinyDataset

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices; see tests/conftest.py")


def test_create_mesh():
  assert parallel.create_mesh(None).shape == {"data": 1}
  assert parallel.create_mesh({"data_parallel": 4}).devices.tolist() == jax.devices()[:4]
  assert parallel.create_mesh({"data_parallel": -1}).shape == {"data": jax.device_count()}
  for bad in (0, -2, jax.device_count() + 1, True, 2.0):
    with pytest.raises(ValueError, match="config.mesh.data_parallel"):
      parallel.create_mesh({"data_parallel": bad})


def test_shard_batch_splits_rows_across_devices():
  mesh = parallel.create_mesh({"data_parallel": 8})
  image = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  batch = parallel.shard_batch({"image": image, "label": np.arange(16, dtype=np.int32)}, mesh)
  assert batch["image"].sharding.spec == PartitionSpec("data")
  shards = sorted(batch["image"].addressable_shards, key=lambda s: s.index[0].start)
  assert [s.data.shape for s in shards] == [(2, 3)] * 8
  np.testing.assert_array_equal(np.asarray(batch["image"]), image)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.shard_batch({"image": image[:12]}, mesh)


def _run(data_parallel, model_name, num_steps=4):
  """Trains `num_steps` steps with GMP masks updated every step; returns (state, metrics) on the host."""
  config = validate({"model": {"name": model_name}, "data": {"name": "tiny"},
                     "training": {"num_steps": num_steps, "batch_size": 16, "learning_rate": 0.05},
                     "mesh": {"data_parallel": data_parallel}})
  data = TinyDataset(input_shape=(40,) if model_name == "mlp" else (8, 8, 3))
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.5, "begin_step": 0, "end_step": 3, "update_every": 1})
  tx = sj.sparsify(optim.make_optimizer(config.training, num_steps), pruner)
  mesh = parallel.create_mesh(config.mesh)
  model = train.create_model(model_name, 10)
  state = train.create_train_state(config, model, data, jax.random.PRNGKey(0), tx, mesh)
  step_fn = train.make_train_step(model, tx, mesh)
  history = []
  hooks = [lambda step, state, metrics: history.append(jax.device_get(metrics))]
  state = train.train_loop(state, step_fn, data, 16, mesh, 0, num_steps, hooks)
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.mesh.shape == {"data": data_parallel} and leaf.sharding.spec == PartitionSpec()
  return jax.device_get(state), history


@pytest.mark.parametrize("model_name", ["mlp", pytest.param("resnet20", marks=pytest.mark.slow)])
def test_data_parallel_step_matches_single_device(model_name):
  one, one_metrics = _run(1, model_name)
  eight, eight_metrics = _run(8, model_name)
  # GSPMD computes the same global-batch math (BatchNorm statistics included); only the reduction order differs.
  for a, b in zip(jax.tree.leaves((one.params, one.batch_stats)), jax.tree.leaves((eight.params, eight.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(one_metrics, eight_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  masks_one, masks_eight = sj.get_masks(one.opt_state), sj.get_masks(eight.opt_state)
  assert jax.tree.structure(masks_one) == jax.tree.structure(masks_eight)
  agree = [np.mean(a == b) for a, b in zip(jax.tree.leaves(masks_one), jax.tree.leaves(masks_eight))]
  assert min(agree) > 0.999, agree
  assert sj.summary(masks_eight)["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_data_parallel_traces_once():
  before = steps.TRACES["train_step"]
  _run(8, "mlp", num_steps=5)
  assert steps.TRACES["train_step"] - before == 1
