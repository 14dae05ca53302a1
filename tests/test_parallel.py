"""Data parallelism: meshes, batch sharding, and the 8-device step against the 1-device step."""
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

import sparsejax as sj
from sparsejax import optim, parallel, steps, train
from sparsejax.config_validation import validate
from tiny_dataset import TinyDataset

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices; see tests/conftest.py")


def test_create_mesh():
  assert parallel.create_mesh(None).shape == {"data": 1, "fsdp": 1, "model": 1}
  assert parallel.create_mesh({"data_parallel": 4}).devices.ravel().tolist() == jax.devices()[:4]
  assert parallel.create_mesh({"data_parallel": -1}).shape == {"data": jax.device_count(), "fsdp": 1, "model": 1}
  assert parallel.create_mesh({"fsdp": -1, "model": 2}).shape == {"data": 1, "fsdp": jax.device_count() // 2,
                                                                  "model": 2}
  for bad in (0, -2, True, 2.0):
    with pytest.raises(ValueError, match="config.mesh.data_parallel"):
      parallel.create_mesh({"data_parallel": bad})
  with pytest.raises(ValueError, match="data_parallel x fsdp x model = 16 devices"):
    parallel.create_mesh({"data_parallel": 2, "fsdp": 8})
  with pytest.raises(ValueError, match="at most one axis of size -1"):
    parallel.create_mesh({"fsdp": -1, "model": -1})


def test_shard_batch_splits_rows_across_devices():
  mesh = parallel.create_mesh({"data_parallel": 8})
  image = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  batch = parallel.shard_batch({"image": image, "label": np.arange(16, dtype=np.int32)}, mesh)
  assert batch["image"].sharding.spec == PartitionSpec(("data", "fsdp"))
  shards = sorted(batch["image"].addressable_shards, key=lambda s: s.index[0].start)
  assert [s.data.shape for s in shards] == [(2, 3)] * 8
  np.testing.assert_array_equal(np.asarray(batch["image"]), image)
  with pytest.raises(ValueError, match="not divisible"):
    parallel.shard_batch({"image": image[:12]}, mesh)


def _setup(data_parallel, model_name, num_steps):
  config = validate({"model": {"name": model_name}, "data": {"name": "tiny"},
                     "training": {"num_steps": num_steps, "batch_size": 16, "learning_rate": 0.05},
                     "mesh": {"data_parallel": data_parallel}})
  data = TinyDataset(input_shape=(40,) if model_name == "mlp" else (8, 8, 3))
  # GMP masks updated at both steps compared (0 and 1): the comparison covers mask updates.
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.5, "begin_step": 0, "end_step": 1, "update_every": 1})
  tx = sj.sparsify(optim.make_optimizer(config.training, num_steps), pruner)
  mesh = parallel.create_mesh(config.mesh)
  model = train.create_model(model_name, 10)
  state = train.create_train_state(config, model, data, jax.random.PRNGKey(0), tx, mesh)
  return config, data, tx, mesh, model, state


def _run(data_parallel, model_name, num_steps=2):
  """Trains `num_steps` steps; returns (state, metrics) on the host."""
  _, data, tx, mesh, model, state = _setup(data_parallel, model_name, num_steps)
  step_fn = train.make_train_step(model, tx, mesh)
  history = []
  hooks = [lambda step, state, metrics: history.append(jax.device_get(metrics))]
  state = train.train_loop(state, step_fn, data, 16, mesh, 0, num_steps, hooks)
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.mesh.shape == {"data": data_parallel, "fsdp": 1, "model": 1}
  assert leaf.sharding.spec == PartitionSpec()
  return jax.device_get(state), history


# Why this tolerance: the 1- and 8-device steps compute the same global-batch math (BatchNorm statistics included) and
# differ only in the order of float32 batch reductions, ~1e-7 relative. Two steps are compared: a longer run amplifies
# such a difference about 3x a step at learning rate 0.05 with momentum, because a pre-ReLU value can sit at -4e-7 in
# one order and 0.0 in the other (the same happens on one device with the batch rows permuted), so a bound after
# several steps would depend on the machine's rounding. The worst difference seen after two steps was 3.6e-7.
RTOL, ATOL = 1e-5, 1e-6


def _float_leaves(state):
  return jax.tree.leaves((state.params, state.batch_stats))


@pytest.mark.parametrize("model_name", ["mlp", pytest.param("resnet20", marks=pytest.mark.slow)])
def test_data_parallel_step_matches_single_device(model_name):
  one, one_metrics = _run(1, model_name)
  eight, eight_metrics = _run(8, model_name)
  for a, b in zip(_float_leaves(one), _float_leaves(eight)):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
  for a, b in zip(one_metrics, eight_metrics):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=RTOL)
  masks_one, masks_eight = sj.get_masks(one.opt_state), sj.get_masks(eight.opt_state)
  assert jax.tree.structure(masks_one) == jax.tree.structure(masks_eight)
  for a, b in zip(jax.tree.leaves(masks_one), jax.tree.leaves(masks_eight)):
    np.testing.assert_array_equal(a, b)  # masks are exact
  assert sj.summary(masks_eight, eight.params)["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_per_shard_batchnorm_statistics_fail_the_comparison():
  """Negative control: BatchNorm statistics of each device's 2 rows instead of the global batch (what a data-parallel
  step without GSPMD's global reductions would compute) must differ from the 1-device step by more than the
  tolerance above, or the comparison could not tell a wrong step from a right one."""
  one, _ = _run(1, "resnet20", num_steps=1)
  config, data, tx, mesh, model, state = _setup(1, "resnet20", 1)
  batch = data.train_batch(0, 16)
  groups = {k: v.reshape(8, 2, *v.shape[1:]) for k, v in batch.items()}

  def loss_fn(params):
    def one_shard(image, label):
      logits, updated = model.apply({"params": params, "batch_stats": state.batch_stats}, image, train=True,
                                    mutable=["batch_stats"])
      return steps.cross_entropy(logits, label).mean(), updated["batch_stats"]
    losses, stats = jax.vmap(one_shard)(groups["image"], groups["label"])
    return losses.mean(), jax.tree.map(lambda s: s.mean(0), stats)

  (_, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(state.params)
  updates, _ = jax.jit(tx.update)(grads, state.opt_state, state.params)
  per_shard = state.replace(params=jax.device_get(optax.apply_updates(state.params, updates)), batch_stats=stats)
  excess = max(float(np.max(np.abs(a - b) - (ATOL + RTOL * np.abs(a))))
               for a, b in zip(_float_leaves(one), _float_leaves(per_shard)))
  assert excess > 0, "per-shard BatchNorm statistics passed the 1-vs-8-device comparison"


def test_data_parallel_traces_once():
  before = steps.TRACES["train_step"]
  _run(8, "mlp", num_steps=5)
  assert steps.TRACES["train_step"] - before == 1


def test_multihost_reads_the_jax_process_variables(monkeypatch):
  """`jax.distributed.initialize()` alone reads only the coordinator address ("Number of processes must be defined");
  the three JAX_* variables are read and passed on, and a partial or malformed set is refused with the variable
  named."""
  from sparsejax import parallel as par
  env = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:12345", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
  assert par.distributed_args(env) == {"coordinator_address": "127.0.0.1:12345", "num_processes": 2, "process_id": 1,
                                       "coordinator_bind_address": "127.0.0.1:12345"}
  assert par.distributed_args({}) == {}
  for bad, message in [({**env, "JAX_PROCESS_ID": ""}, "JAX_PROCESS_ID not set"),
                       ({**env, "JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two'; accepted values: an int >= 1"),
                       ({**env, "JAX_PROCESS_ID": "2"}, r"JAX_PROCESS_ID=2; accepted values: an int in \[0, ")]:
    with pytest.raises(ValueError, match=message):
      par.distributed_args(bad)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(par, "_distributed_initialized", False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  par.initialize_distributed({"multihost": True})
  par.initialize_distributed({"multihost": True})  # once per process
  assert calls == [{"coordinator_address": "127.0.0.1:12345", "num_processes": 2, "process_id": 1,
                    "coordinator_bind_address": "127.0.0.1:12345"}]


def test_rules_fsdp_default_and_groups_across_shards():
  """Rules win in order, the FSDP default splits the largest divisible dimension, bad rules name themselves, and n:m
  groups that would straddle a shard boundary are refused naming the param."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  mesh = parallel.create_mesh({"fsdp": 4, "model": 2})
  params = {"Dense_0": {"kernel": jnp.zeros((64, 32)), "bias": jnp.zeros(32)}, "Dense_1": {"kernel": jnp.zeros((32, 8))}}
  specs = parallel.param_specs(params, mesh, [("Dense_1/kernel", ("model", None)), ("Dense_.*kernel", ("fsdp", "model"))],
                               min_size=0)
  assert specs["Dense_1"]["kernel"] == PartitionSpec("model", None)   # first match wins
  assert specs["Dense_0"]["kernel"] == PartitionSpec("fsdp", "model")
  assert parallel.param_specs(params, mesh, min_size=0)["Dense_0"]["kernel"] == PartitionSpec("fsdp", None)
  assert parallel.param_specs(params, mesh)["Dense_0"]["kernel"] == PartitionSpec()  # below fsdp_min_size
  with pytest.raises(ValueError, match=r"config.mesh.rules\[0\].*names \['tensor'\]"):
    parallel.param_specs(params, mesh, [("kernel", ("tensor", None))])
  with pytest.raises(ValueError, match=r"config.mesh.rules\[0\].*does not divide"):
    parallel.param_specs({"head": {"kernel": jnp.zeros((32, 10))}}, mesh, [("head/kernel", (None, "fsdp"))])
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), parallel.param_specs(params, mesh, min_size=0),
                           is_leaf=lambda s: isinstance(s, PartitionSpec))
  ok = sj.create_pruner({"algorithm": "gmp", "target": 0.5, "granularity": "2:4", "end_step": 4})
  parallel.check_groups(ok, params, shardings)  # 64 / 4 = 16 rows per shard: whole groups of 4
  bad = sj.create_pruner({"algorithm": "gmp", "target": 0.875, "granularity": "2:16", "end_step": 4,
                          "prunable": ["Dense_1/kernel"]})
  with pytest.raises(ValueError, match=r"Dense_1/kernel \(32, 8\) is split.*multiple of m=16"):
    parallel.check_groups(bad, params, shardings)  # 32 / 4 = 8 rows per shard: half a group of 16
