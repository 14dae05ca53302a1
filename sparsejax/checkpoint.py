"""Orbax save and restore of the whole run state under `workdir/checkpoints`.

The state is the full `TrainState`: step, params, batch_stats, the optimizer state with the masks and pruner arrays
inside it, and the PRNG key. Nothing else is needed to resume: the data position is the step, because the data order is
a pure function of (seed, step). Mask trees hold None for non-prunable params; None is an empty subtree in JAX, so it is
part of the tree structure that the restore target supplies and round-trips unchanged.

Saving is synchronous: the train step donates the state, so its buffers are reused by the next step and must not be
read by a background writer. Orbax writes each step to a temporary directory and renames it when complete, so a run
killed mid-save leaves no half checkpoint behind (the temporary directory is removed when the manager next opens).

>>> import tempfile, jax.numpy as jnp
>>> manager = create_manager(tempfile.mkdtemp(), keep=2)
>>> save(manager, 3, {"w": jnp.ones(2), "mask": None})
>>> restore_latest(manager, {"w": jnp.zeros(2), "mask": None})
(3, {'mask': None, 'w': Array([1., 1.], dtype=float32)})
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` keeping the last `keep` steps (creates the directory)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def latest_step(workdir: str) -> Optional[int]:
  """The newest complete checkpoint step in `workdir`, or None; creates nothing."""
  path = checkpoint_dir(workdir)
  if not os.path.isdir(path):
    return None
  # Orbax names a finished step directory by the bare number; in-progress ones carry a temporary suffix.
  steps = [int(name) for name in os.listdir(path) if name.isdigit()]
  return max(steps, default=None)


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Saves `state` as checkpoint `step` (overwriting nothing: an existing step is left as it is)."""
  if step in manager.all_steps():
    return
  manager.save(step, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()


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


def restore_latest(manager: ocp.CheckpointManager, target: Any) -> tuple[int, Any]:
  """(step, state) of the newest checkpoint, or (0, target) when there is none."""
  step = manager.latest_step()
  if step is None:
    return 0, target
  return step, restore(manager, step, target)
