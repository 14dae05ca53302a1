"""Device meshes and shardings for data-parallel training.

One mesh axis, "data": the batch is split along it and everything else (params, batch_stats, the optimizer state with
its masks) is replicated, so every mask lives on the same devices as the param it masks. The train step is a plain
`jax.jit` with `in_shardings` / `out_shardings`; XLA inserts the gradient all-reduce (GSPMD), so there is no
hand-written collective anywhere.

Multi-host (several processes, e.g. a TPU pod slice or several GPU hosts): set `config.mesh.multihost = True`, which
calls `jax.distributed.initialize()` before any device is touched. On Cloud TPU and under SLURM / Open MPI it finds the
coordinator by itself; elsewhere export `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, which
`distributed_args` reads and passes on (`jax.distributed.initialize()` alone reads only the first). Every
process computes the same global batch (the data order is a pure function of seed and step) and places only the rows
its own devices hold, so no host exchanges data with another.

>>> import numpy as np
>>> mesh = create_mesh({"data_parallel": 1})
>>> batch = shard_batch({"image": np.zeros((4, 3), np.float32)}, mesh)
>>> batch["image"].shape
(4, 3)
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
_distributed_initialized = False


def _get(config, name, default):
  """config[name] for a ConfigDict, a dict or None, with a default."""
  try:
    return default if config is None else config[name]
  except KeyError:
    return default


ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def distributed_args(environ=None) -> dict:
  """The arguments of `jax.distributed.initialize` from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID ({} when none is set: Cloud TPU, SLURM and Open MPI are detected by JAX itself).

  `jax.distributed.initialize()` reads only the coordinator address from the environment; without the other two it
  fails with "Number of processes must be defined". All three or none must be set.

  >>> distributed_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1}
  """
  import os  # pylint: disable=g-import-not-at-top
  environ = os.environ if environ is None else environ
  given = {name: environ[name] for name in ENV_VARS if environ.get(name, "") != ""}
  if not given:
    return {}
  missing = [name for name in ENV_VARS if name not in given]
  if missing:
    raise ValueError(f"config.mesh.multihost: {', '.join(missing)} not set; set all of {', '.join(ENV_VARS)} (or "
                     "none, where JAX detects the cluster: Cloud TPU, SLURM, Open MPI)")
  out = {"coordinator_address": given["JAX_COORDINATOR_ADDRESS"]}
  for name, key, low in (("JAX_NUM_PROCESSES", "num_processes", 1), ("JAX_PROCESS_ID", "process_id", 0)):
    try:
      out[key] = int(given[name])
    except ValueError:
      raise ValueError(f"config.mesh.multihost: {name}={given[name]!r}; accepted values: an int >= {low}") from None
    if out[key] < low:
      raise ValueError(f"config.mesh.multihost: {name}={out[key]}; accepted values: an int >= {low}")
  if out["process_id"] >= out["num_processes"]:
    raise ValueError(f"config.mesh.multihost: JAX_PROCESS_ID={out['process_id']}; accepted values: an int in "
                     f"[0, JAX_NUM_PROCESSES={out['num_processes']})")
  return out


def initialize_distributed(mesh_config) -> None:
  """Calls `jax.distributed.initialize(**distributed_args())` once when `mesh_config.multihost` is True (a no-op
  otherwise)."""
  global _distributed_initialized
  if _get(mesh_config, "multihost", False) and not _distributed_initialized:
    jax.distributed.initialize(**distributed_args())
    _distributed_initialized = True


def num_data_devices(mesh_config) -> int:
  """How many devices `mesh_config.data_parallel` asks for (-1: all of them).

  Raises:
    ValueError: a count that is not -1 or between 1 and the number of devices.
  """
  requested = _get(mesh_config, "data_parallel", 1)
  available = jax.device_count()
  if requested == -1:
    return available
  if not isinstance(requested, int) or isinstance(requested, bool) or not 1 <= requested <= available:
    raise ValueError(f"config.mesh.data_parallel: got {requested!r}; accepted values are -1 (all devices) or an int "
                     f"from 1 to {available} (the number of devices here: {jax.devices()})")
  return requested


def create_mesh(mesh_config=None) -> Mesh:
  """A 1-D mesh with axis "data" over the first `data_parallel` devices (all of them with -1).

  Args:
    mesh_config: `config.mesh` (ConfigDict or dict) with `data_parallel` (int, default 1) and `multihost` (bool).

  Returns:
    jax.sharding.Mesh with a single axis named "data".
  """
  initialize_distributed(mesh_config)
  n = num_data_devices(mesh_config)
  if jax.process_count() > 1 and n != jax.device_count():
    # Every process must own part of the mesh, or it could not place its rows of the batch.
    raise ValueError(f"config.mesh.data_parallel: a multi-host run uses every device (-1 or {jax.device_count()}), "
                     f"got {n}")
  devices = jax.devices()[:n]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the "data" axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def state_shardings(state: Any, mesh: Mesh) -> Any:
  """A sharding per leaf of `state`: replicated, so masks and optimizer moments sit with their params.

  None leaves (the masks of non-prunable params) stay None: they are empty subtrees, not arrays.
  """
  return jax.tree.map(lambda _: replicated(mesh), state)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
  """Places every array of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, state_shardings(tree, mesh))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns a global host batch into arrays split along "data".

  Each process fills only the shards of its own devices (`jax.make_array_from_callback`), which is what makes the same
  call correct on one host and on many.

  Raises:
    ValueError: the batch size is not divisible by the number of data-parallel devices.
  """
  sharding = data_sharding(mesh)
  n = mesh.shape[DATA_AXIS]
  out = {}
  for key, value in batch.items():
    value = np.asarray(value)
    if value.shape[0] % n:
      raise ValueError(f"batch size {value.shape[0]} is not divisible by config.mesh.data_parallel={n}; "
                       f"choose a batch size (and eval_batch_size) that is a multiple of {n}")
    out[key] = jax.make_array_from_callback(value.shape, sharding, lambda index, v=value: v[index])
  return out


def needs_host_sync(mesh: Mesh) -> bool:
  """True when every step should be waited for.

  Several host-platform (CPU) devices share one thread pool; if many steps are queued their all-reduces can wait on
  each other forever, so the loop blocks on each step's result there. Accelerators need no such wait.
  """
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"
