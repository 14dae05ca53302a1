"""Device meshes, sharding rules and the placement of the train state and the batches.

The mesh has three named axes, `data`, `fsdp` and `model` (`config.mesh.data_parallel`, `.fsdp`, `.model`; one of
them may be -1 for the rest of the devices), built with `jax.make_mesh` as an Auto (GSPMD) mesh. The batch is split
over `data` and `fsdp` together. Params are placed by `config.mesh.rules`, regexes over param paths (`Dense_0/kernel`)
mapping to a PartitionSpec (a tuple of axis names or None per dimension; first match wins), and, for params no rule
matches, the FSDP default of big_vision: a param of at least `fsdp_min_size` entries is split over `fsdp` along its
largest dimension that the axis size divides; everything else is replicated. Every optimizer-state leaf that holds
one value per weight (moments, masks, pruner scores) gets exactly its param's sharding, so a mask lives where its
weights live and a mask update only moves counts between devices (see `sparsejax.select`).

The train step is a plain `jax.jit` with in/out shardings, traced under `jax.set_mesh`; XLA inserts every collective
(GSPMD), so there is no hand-written one anywhere. The state is initialised directly sharded (`jax.jit` with
`out_shardings` from `jax.eval_shape`), never on one device first.

Multi-host (several processes, e.g. a TPU pod slice or several GPU hosts): set `config.mesh.multihost = True`, which
calls `jax.distributed.initialize()` before any device is touched. On Cloud TPU and under SLURM / Open MPI it finds the
coordinator by itself; elsewhere export `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, which
`distributed_args` reads and passes on (`jax.distributed.initialize()` alone reads only the first). One program runs
on every process; each reads only the rows of the batch its own devices hold (`jax.make_array_from_process_local_data`).

>>> import numpy as np
>>> mesh = create_mesh({"data_parallel": 1})
>>> batch = shard_batch({"image": np.zeros((4, 3), np.float32)}, mesh)
>>> batch["image"].shape
(4, 3)
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from sparsejax import masks as masks_lib, transform
from sparsejax.pruners import base

AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: FSDP is data parallelism with sharded state
FSDP_MIN_SIZE = 2**14
_FIELDS = {"data": "data_parallel", "fsdp": "fsdp", "model": "model"}
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

  The coordinator (process 0) listens on that address only (`coordinator_bind_address`), not on every interface.

  >>> args = distributed_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
  ...                          "JAX_PROCESS_ID": "1"})
  >>> args["coordinator_address"], args["num_processes"], args["process_id"], args["coordinator_bind_address"]
  ('10.0.0.1:1234', 2, 1, '10.0.0.1:1234')
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
  out["coordinator_bind_address"] = out["coordinator_address"]
  return out


def initialize_distributed(mesh_config) -> None:
  """Calls `jax.distributed.initialize(**distributed_args())` once when `mesh_config.multihost` is True (a no-op
  otherwise)."""
  global _distributed_initialized
  if _get(mesh_config, "multihost", False) and not _distributed_initialized:
    jax.distributed.initialize(**distributed_args())
    _distributed_initialized = True


def mesh_shape(mesh_config) -> dict[str, int]:
  """{"data": d, "fsdp": f, "model": m} from `config.mesh` (a -1 takes the devices the others leave).

  Raises:
    ValueError: a size that is not -1 or >= 1, two -1s, or more devices than there are.
  """
  available = jax.device_count()
  sizes = {}
  for axis, field in _FIELDS.items():
    v = _get(mesh_config, field, 1)
    if not isinstance(v, int) or isinstance(v, bool) or not (v == -1 or v >= 1):
      raise ValueError(f"config.mesh.{field}: got {v!r}; accepted values are -1 (the remaining devices) or an int "
                       f"from 1 to {available} (the number of devices here)")
    sizes[axis] = v
  free = [a for a, v in sizes.items() if v == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: {', '.join('config.mesh.' + _FIELDS[a] for a in free)} are all -1; accepted "
                     "values: at most one axis of size -1")
  fixed = int(np.prod([v for v in sizes.values() if v != -1]))
  if free:
    if available % fixed:
      raise ValueError(f"config.mesh.{_FIELDS[free[0]]}=-1: the other axes ({fixed} devices) do not divide the "
                       f"{available} devices")
    sizes[free[0]] = available // fixed
  total = int(np.prod(list(sizes.values())))
  if total > available:
    raise ValueError(f"config.mesh: data_parallel x fsdp x model = {total} devices, but there are {available} "
                     f"({jax.devices()})")
  return sizes


def create_mesh(mesh_config=None) -> Mesh:
  """The (data, fsdp, model) mesh of `config.mesh` over the first data x fsdp x model devices, Auto axes (GSPMD).

  Args:
    mesh_config: `config.mesh` (ConfigDict or dict) with `data_parallel`, `fsdp`, `model` (ints, -1 for the rest;
      default 1) and `multihost` (bool).
  """
  initialize_distributed(mesh_config)
  sizes = mesh_shape(mesh_config)
  n = int(np.prod(list(sizes.values())))
  if jax.process_count() > 1 and n != jax.device_count():
    # Every process must own part of the mesh, or it could not place its rows of the batch.
    raise ValueError(f"config.mesh: a multi-host run uses every device ({jax.device_count()}); data_parallel x fsdp "
                     f"x model = {n}")
  return jax.make_mesh(tuple(sizes[a] for a in AXES), AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=jax.devices()[:n])


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the "data" and "fsdp" axes."""
  return NamedSharding(mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def batch_ways(mesh: Mesh) -> int:
  """Into how many pieces the batch is split."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))


def _parse_spec(spec, where: str) -> PartitionSpec:
  """A rule's spec: a PartitionSpec, a tuple / list of axis names, None or tuples of names, or a string such as
  'fsdp,None' or '(fsdp, model)'."""
  if isinstance(spec, PartitionSpec):
    return spec
  if isinstance(spec, str):
    parts = [p.strip() for p in spec.strip().strip("()[]").split(",")] if spec.strip("()[] ") else []
    spec = [None if p in ("None", "") else p for p in parts]
  if not isinstance(spec, (tuple, list)):
    raise ValueError(f"{where}: got {spec!r}; accepted values: a tuple of mesh axis names ({', '.join(AXES)}) or "
                     "None, one per dimension")
  return PartitionSpec(*[tuple(d) if isinstance(d, list) else d for d in spec])


def parse_rules(rules) -> list[tuple[str, PartitionSpec]]:
  """`config.mesh.rules`: a sequence of (regex, spec) pairs, or a mapping regex -> spec; checked, specs parsed."""
  if rules is None:
    return []
  items = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
  out = []
  for i, item in enumerate(items):
    where = f"config.mesh.rules[{i}]"
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
      raise ValueError(f"{where}: got {item!r}; accepted values: a (regex, PartitionSpec) pair such as "
                       "('Dense_0/kernel', ('fsdp', None))")
    try:
      re.compile(item[0])
    except re.error as e:
      raise ValueError(f"{where}: {item[0]!r} is not a valid regex ({e})") from None
    out.append((item[0], _parse_spec(item[1], where)))
  return out


def _axes_of(entry) -> tuple:
  return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def _check_spec(spec: PartitionSpec, shape, mesh: Mesh, where: str) -> PartitionSpec:
  if len(spec) > len(shape):
    raise ValueError(f"{where}: {spec} has {len(spec)} entries for a param of shape {tuple(shape)}")
  for d, entry in enumerate(spec):
    axes = _axes_of(entry)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
      raise ValueError(f"{where}: {spec} names {unknown}; accepted values: the mesh axes {list(mesh.axis_names)}")
    ways = int(np.prod([mesh.shape[a] for a in axes]))
    if shape[d] % ways:
      raise ValueError(f"{where}: {spec} splits dimension {d} of size {shape[d]} (shape {tuple(shape)}) {ways} ways, "
                       "which does not divide it")
  return spec


def fsdp_spec(shape, ways: int, min_size: int = FSDP_MIN_SIZE) -> PartitionSpec:
  """The FSDP default (big_vision): split along the largest dimension that `ways` divides, when the param has at least
  `min_size` entries; replicated otherwise.

  >>> fsdp_spec((784, 300), 4), fsdp_spec((3, 3, 16, 16), 4, min_size=0), fsdp_spec((10,), 4)
  (P('fsdp', None), P(None, None, 'fsdp', None), P())
  """
  if ways <= 1 or int(np.prod(shape)) < min_size:
    return PartitionSpec()
  for d in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
    if shape[d] % ways == 0:
      return PartitionSpec(*[("fsdp" if i == d else None) for i in range(len(shape))])
  return PartitionSpec()


def param_specs(params: Any, mesh: Mesh, rules=None, min_size: int = FSDP_MIN_SIZE) -> Any:
  """A PartitionSpec per param (arrays or ShapeDtypeStructs): the first rule whose regex matches the param's path
  ('Dense_0/kernel', searched), else the FSDP default over the mesh's `fsdp` axis, else replicated.

  Raises:
    ValueError: a rule naming an unknown axis, with more entries than the param has dimensions, or splitting a
      dimension the axes do not divide (the message names the rule and the param).
  """
  rules = parse_rules(rules)
  ways = mesh.shape.get("fsdp", 1)

  def spec(path, x):
    shape = tuple(np.shape(x))
    for i, (pattern, s) in enumerate(rules):
      if re.search(pattern, path):
        return _check_spec(s, shape, mesh, f"config.mesh.rules[{i}] ({pattern!r}) on {path}")
    return fsdp_spec(shape, ways, min_size)

  flat = masks_lib.flatten_with_paths(params)
  specs = {path: spec(path, x) for path, x in flat}
  return masks_lib.map_prunable(lambda path, _: specs[path], params, list(specs))


def state_specs(state: Any, params: Any, param_spec_tree: Any) -> Any:
  """A PartitionSpec per leaf of `state` (any tree holding params and optimizer state): a leaf that holds one value
  per weight of a param (found by path and shape as `transform.state_slots` finds them: a moment, a mask, a pruner
  score, the param itself) gets that param's spec, after replicated leading axes when stacked (a history); anything
  else is replicated. `param_spec_tree` is `param_specs(params, ...)`."""
  specs = jax.tree.leaves(param_spec_tree, is_leaf=lambda v: isinstance(v, PartitionSpec))
  leaves, treedef = jax.tree.flatten(state)
  out = [PartitionSpec()] * len(leaves)
  for slot in transform.state_slots(state, params):
    s = specs[slot.layer]
    if slot.stacked:
      ndim, pdim = np.ndim(leaves[slot.leaf]), np.ndim(jax.tree.leaves(params)[slot.layer])
      s = PartitionSpec(*([None] * (ndim - pdim)), *s, *([None] * (pdim - len(s))))
    out[slot.leaf] = s
  return treedef.unflatten(out)


def state_shardings(state: Any, mesh: Mesh, params: Any = None, rules=None, min_size: int = FSDP_MIN_SIZE) -> Any:
  """A NamedSharding per leaf of `state`: with `params` (the params inside `state`), each param by `param_specs` and
  each optimizer leaf like its param (`state_specs`); without, everything replicated.

  None leaves (the masks of non-prunable params) stay None: they are empty subtrees, not arrays.
  """
  if params is None:
    return jax.tree.map(lambda _: replicated(mesh), state)
  specs = state_specs(state, params, param_specs(params, mesh, rules, min_size))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda v: isinstance(v, PartitionSpec))


def describe(params: Any, shardings: Any) -> str:
  """One line per param: path, shape and spec (what a run logs at start)."""
  flat = masks_lib.flatten_with_paths(params)
  specs = [s.spec for s in jax.tree.leaves(shardings, is_leaf=lambda v: isinstance(v, NamedSharding))]
  width = max(len(p) for p, _ in flat)
  return "\n".join(f"  {p:<{width}}  {str(tuple(np.shape(x))):<18} {s}" for (p, x), s in zip(flat, specs))


def process_rows(mesh: Mesh, batch_size: int) -> slice:
  """The rows of a global batch that this process's devices hold (contiguous: `jax.make_mesh` orders the devices
  of a process together along the batch axes).

  Raises:
    ValueError: the batch size is not divisible by the number of batch shards.
  """
  n = batch_ways(mesh)
  if batch_size % n:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n} batch shards (config.mesh.data_parallel x "
                     f"config.mesh.fsdp); choose a batch size (and eval_batch_size) that is a multiple of {n}")
  index_map = data_sharding(mesh).addressable_devices_indices_map((batch_size,))
  starts = sorted({idx[0].indices(batch_size)[:2] for idx in index_map.values()})
  lo, hi = starts[0][0], starts[-1][1]
  if sum(b - a for a, b in starts) != hi - lo:
    raise ValueError(f"the devices of process {jax.process_index()} hold rows {starts} of the batch, which are not "
                     "contiguous; build the mesh with jax.make_mesh (parallel.create_mesh)")
  return slice(lo, hi)


def global_batch(read: Callable[[slice], Mapping[str, np.ndarray]], batch_size: int, mesh: Mesh) -> dict:
  """A global batch split over the batch axes, each process reading only its own rows: `read(rows)` returns the
  arrays of rows `rows` (a slice) of the global batch, and `jax.make_array_from_process_local_data` assembles them."""
  rows = process_rows(mesh, batch_size)
  sharding = data_sharding(mesh)
  out = {}
  for key, value in read(rows).items():
    value = np.asarray(value)
    out[key] = jax.make_array_from_process_local_data(sharding, value, (batch_size, *value.shape[1:]))
  return out


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """A global host batch (every process holding all of it) split over the batch axes; each process places only its
  own rows. The engine reads only those rows instead (`global_batch`).

  Raises:
    ValueError: the batch size is not divisible by the number of batch shards.
  """
  sizes = {len(np.shape(v)) and np.shape(v)[0] for v in batch.values()}
  size = sizes.pop()
  return global_batch(lambda rows: {k: np.asarray(v)[rows] for k, v in batch.items()}, size, mesh)


def needs_host_sync(mesh: Mesh) -> bool:
  """True when every step should be waited for.

  Several host-platform (CPU) devices share one thread pool; if many steps are queued their all-reduces can wait on
  each other forever, so the loop blocks on each step's result there. Accelerators need no such wait.
  """
  return mesh.devices.size > 1 and mesh.devices.flat[0].platform == "cpu"


def check_groups(pruner, params: Any, shardings: Any) -> None:
  """Refuses n:m and block groups that would straddle a shard boundary: each device must hold whole groups, or
  choosing within a group would need the weights of another device.

  Raises:
    ValueError: naming the param, its spec, the granularity and what would divide evenly.
  """
  kind = pruner.config.get("granularity", "unstructured")
  if not isinstance(kind, str) or ":" not in kind:
    return
  plan = base.make_plan(params, pruner.config)
  flat = masks_lib.flatten_with_paths(shardings, is_leaf=lambda v: isinstance(v, NamedSharding))
  specs = {p: s.spec for p, s in flat}
  mesh = flat[0][1].mesh
  for path, (leaf, sliced), shape, gran in zip(plan.paths, base.layer_leaves(plan), plan.shapes, plan.grans):
    spec = specs.get(leaf, PartitionSpec())
    spec = PartitionSpec(*tuple(spec)[1:]) if sliced else spec  # a stacked leaf's layer: its spec past axis 0
    for d, entry in enumerate(spec):
      ways = int(np.prod([mesh.shape[a] for a in _axes_of(entry)]))
      if ways == 1:
        continue
      piece = shape[d] // ways
      if gran.kind == "nm" and d == gran.axis and piece % gran.m:
        need = f"a shard length along axis {d} that is a multiple of m={gran.m}"
      elif gran.kind == "block" and d == len(shape) - 1 and piece % gran.block[1]:
        need = f"a shard length along the last axis that is a multiple of {gran.block[1]}"
      elif gran.kind == "block" and d < len(shape) - 1 and (piece * int(np.prod(shape[d + 1:-1]))) % gran.block[0]:
        need = f"shard boundaries of the 2-D view's rows at multiples of {gran.block[0]}"
      else:
        continue
      raise ValueError(f"config.sparsity.granularity={kind!r} with config.mesh: {path} {tuple(shape)} is split by "
                       f"{spec} into pieces of {piece} along axis {d}, so its groups would straddle devices; needs "
                       f"{need} (change config.mesh.rules for this param, or the mesh)")

