"""Orbax save and restore of the whole run state under `workdir/checkpoints`.

The state is the full `TrainState`: step, params, batch_stats, the optimizer state with the masks and pruner arrays
inside it, and the PRNG key. Nothing else is needed to resume: the data position is the step, because the data order is
a pure function of (seed, step). Mask trees hold None for non-prunable params; None is an empty subtree in JAX, so it is
part of the tree structure that the restore target supplies and round-trips unchanged.

Saves are asynchronous when the manager is made with `async_save=True` (the engine's default,
`config.training.async_checkpoint`): `save` returns once orbax has the arrays (the blocking part: a device-to-host
copy), and the files are written in a background thread while training goes on. The train step donates the state; a
buffer still held by a save in flight is not reused (JAX copies instead of donating it), so a checkpoint never sees a
later step's values (tested: a checkpoint's digest, computed before the save, is checked on restore). `finish` waits
for the save in flight; a background failure is raised there or by the next `save` as `SaveError`. Orbax writes each
step to a temporary directory and renames it when complete, so a run killed mid-save leaves no half checkpoint behind
(the temporary directory is removed when the manager next opens).

Checkpoints are verified: before a step is saved, a SHA-256 of the state (the path, shape, dtype and two 32-bit
checksums of the bits of every array, computed on the devices) is written beside the checkpoints (`checkpoints.sha256/<step>.json`), and a restore recomputes it. A newest checkpoint
that is corrupt, truncated or fails to restore is reported on stderr and the previous one is used. A save that fails
(read-only directory, full disk) raises `SaveError` and leaves the previous checkpoints as they were.

The workdir may be local or any filesystem that `etils.epath` and orbax support (`gs://bucket/run`): its paths are
`epath.Path`s, never turned into local ones. Every process takes part in an orbax save (orbax coordinates them);
only process 0 writes the digest files.

>>> import tempfile, jax.numpy as jnp
>>> manager = create_manager(tempfile.mkdtemp(), keep=2)
>>> save(manager, 3, {"w": jnp.ones(2), "mask": None})
>>> restore_latest(manager, {"w": jnp.zeros(2), "mask": None})
(3, {'mask': None, 'w': Array([1., 1.], dtype=float32)})
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Optional

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

from sparsejax import faults, report, select

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> epath.Path:
  """`workdir/checkpoints`: made absolute when local, the same URI when remote (`gs://bucket/run/checkpoints`)."""
  if report.is_remote(workdir):
    return report.as_path(workdir) / CHECKPOINT_DIR
  return report.as_path(os.path.abspath(workdir)) / CHECKPOINT_DIR


def create_manager(workdir: str, keep: int, async_save: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps (creates the directory); with
  `async_save`, `save` returns before the files are written (see the module docstring; `finish` waits)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def latest_step(workdir: str) -> Optional[int]:
  """The newest complete checkpoint step in `workdir`, or None; creates nothing."""
  path = checkpoint_dir(workdir)
  if not path.is_dir():
    return None
  # Orbax names a finished step directory by the bare number; in-progress ones carry a temporary suffix.
  steps = [int(child.name) for child in path.iterdir() if child.name.isdigit()]
  return max(steps, default=None)


class SaveError(OSError):
  """A checkpoint could not be written; the earlier checkpoints are intact."""


def _as_uint32(x):
  x = jnp.asarray(x)
  if x.dtype == bool:
    return x.astype(jnp.uint32)
  width = jnp.dtype(x.dtype).itemsize
  if width == 8:  # x64: both halves
    halves = lax.bitcast_convert_type(x, jnp.uint32)
    return halves[..., 0] ^ (halves[..., 1] * jnp.uint32(0x9E3779B1))
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _checksums(leaves):
  """Two uint32 weighted sums of each array's bit patterns (wrapping, so exact and independent of how the array is
  sharded or summed): sum(bits * (2i + 1)) and sum(bits * (2654435761 i | 1)) over flat positions i. Odd weights
  make every single-bit change change both sums."""
  out = []
  for x in leaves:
    bits = _as_uint32(x)
    pos = select.flat_index(bits.shape)  # in the array's own shape (and sharding)
    w1, w2 = pos * jnp.uint32(2) + jnp.uint32(1), (pos * jnp.uint32(2654435761)) | jnp.uint32(1)
    out.append(jnp.stack([jnp.sum(bits * w1, dtype=jnp.uint32), jnp.sum(bits * w2, dtype=jnp.uint32)]))
  return out


def digest(state: Any) -> str:
  """SHA-256 over every array of `state`: its path, shape, dtype and two 32-bit checksums of its bits.

  The checksums are computed where the arrays are (one jitted pass; only 8 bytes per array come back), so every
  process of a multi-host run computes the same digest of a state no process holds whole, and the digest does not
  depend on the sharding: a run resumed on another mesh verifies its checkpoints.
  """
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  sums = jax.device_get(_checksums([leaf for _, leaf in flat])) if flat else []
  h = hashlib.sha256()
  for (path, leaf), s in zip(flat, sums):
    h.update(f"{jax.tree_util.keystr(path)}|{tuple(np.shape(leaf))}|{jnp.result_type(leaf)}|".encode())
    h.update(np.asarray(s, np.uint32).tobytes())
  return h.hexdigest()


def _digest_path(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return report.as_path(f"{os.fspath(manager.directory)}.sha256") / f"{step}.json"


def _fault_point_in_save() -> None:
  # The engine's fault tests kill a run here: the digest written, the checkpoint not (see sparsejax.faults).
  faults.point("SPARSEJAX_FAULT_KILL_IN_SAVE")


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` as checkpoint `step` (overwriting nothing: an existing step is left as it is).

  Raises:
    SaveError: the directory cannot be written; earlier checkpoints are left as they were.
  """
  if step in manager.all_steps():
    return
  path = _digest_path(manager, step)
  finish(manager)  # the previous save's background failure, if any, is this one's: report it before writing more
  try:
    # The digest goes first, so that no finished checkpoint exists without one. Process 0 writes it (the same bytes on
    # every process: several writers of one file on a shared filesystem would race) before the save, whose barriers
    # keep the others from finishing the checkpoint earlier.
    text = json.dumps({"step": step, "sha256": digest(state)})
    if report.is_writer():
      path.parent.mkdir(parents=True, exist_ok=True)
      report.write_file(path, text)
    _fault_point_in_save()
    manager.save(step, args=ocp.args.StandardSave(state))
    options = getattr(manager, "_options", None)  # orbax's; absent from stand-ins, which save synchronously
    if options is None or not options.enable_async_checkpointing:
      manager.wait_until_finished()
  except (OSError, ValueError) as e:
    raise SaveError(f"could not save checkpoint {step} in {manager.directory}: {e}; the earlier checkpoints and run "
                    "files are as they were") from None


def finish(manager: ocp.CheckpointManager, close: bool = False) -> None:
  """Waits for a save in flight (and closes the manager when `close`).

  Raises:
    SaveError: the background write failed; the earlier checkpoints are as they were.
  """
  try:
    manager.wait_until_finished()
  except (OSError, ValueError, RuntimeError) as e:
    raise SaveError(f"could not write a checkpoint in {manager.directory}: {e}; the earlier checkpoints and run "
                    "files are as they were") from None
  finally:
    if close:
      manager.close()


def abstract_like(target: Any) -> Any:
  """ShapeDtypeStructs with the shardings of `target` (arrays or ShapeDtypeStructs)."""

  def spec(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

  return jax.tree.map(spec, target)


def restore(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """Checkpoint `step` restored into the structure, dtypes and shardings of `target`.

  Args:
    manager: from `create_manager`.
    step: a saved step (`manager.all_steps()`).
    target: a state of the right structure (e.g. a freshly created TrainState); only its shapes, dtypes and
      shardings are used, so its values may be anything.

  Raises:
    ValueError: the checkpoint does not match the structure of `target` (a different model or sparsity config).
  """
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"checkpoint {step} in {manager.directory} does not match the state of this config (was the "
                     f"workdir written by a different model or sparsity config?): {e}") from e


def restore_verified(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """`restore`, then the state's digest checked against the one saved with it.

  Raises:
    ValueError: the checkpoint does not restore or its digest differs (corrupt or truncated).
  """
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
  except Exception as e:  # pylint: disable=broad-except (orbax / tensorstore raise many kinds on damaged files)
    raise ValueError(f"checkpoint {step} in {manager.directory} could not be read: {str(e).splitlines()[0]}") from e
  path = _digest_path(manager, step)
  if path.exists():
    want = json.loads(path.read_text())["sha256"]
    if digest(state) != want:
      raise ValueError(f"checkpoint {step} in {manager.directory} is corrupt: its SHA-256 differs from the one saved "
                       "with it")
  return state


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[int, Any]:
  """(step, state) of the newest checkpoint that restores and verifies, or (0, target) when there is none.

  A newer checkpoint that fails is reported on stderr and skipped, so a run resumes from the one before it.

  Raises:
    ValueError: every checkpoint there fails (the messages say why); nothing is trained over them.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = restore_verified(manager, step, target)
    except ValueError as e:
      failures.append(str(e))
      print(f"warning: {e}; trying the checkpoint before it", file=sys.stderr, flush=True)
      continue
    return step, state
  if failures:
    raise ValueError(f"no checkpoint in {manager.directory} can be restored ({'; '.join(failures)}); move the "
                     "workdir aside to start again")
  return 0, target
