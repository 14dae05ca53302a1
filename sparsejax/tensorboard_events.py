"""TensorBoard event files beside metrics.jsonl (`config.training.tensorboard`; the `tensorboard` extra).

Every numeric field of a metrics record (nested dicts as `outer/inner`) becomes a scalar at the record's step, in an
`events.out.tfevents.*` file in the same directory as metrics.jsonl, so `tensorboard --logdir <workdir or a parent>`
shows a run (and each IMP level's `levels/<level>_<run>/` as its own run) next to other frameworks' runs.

The writer is tensorboardX (numpy and protobuf only). `clu.metric_writers` is the Flax ecosystem's writer, but
importing it imports TensorFlow (its package `__init__` imports `SummaryWriter`, which is `tf.summary`; the only
other event writer it has wraps torch's): neither belongs in a JAX install. The files are TensorBoard's own format, so
the choice of writer changes nothing for the reader. Scalars are float32 there (`simple_value`, as tf.summary and
torch write them); metrics.jsonl keeps the full values.

On resume, metrics.jsonl drops the records past the checkpoint; the event files are rewritten the same way (old files
removed, the kept records written to a new one), so both always hold the same steps.

>>> import tempfile
>>> logdir = tempfile.mkdtemp()
>>> writer = EventWriter(logdir, previous=[{"step": 1, "train_loss": 0.5}])
>>> writer.write({"step": 2, "train_loss": 0.25, "layers": {"fc1": 0.9}, "status": "ok"})
>>> writer.close()
>>> read_scalars(logdir)
{'layers/fc1': [(2, 0.8999999761581421)], 'train_loss': [(1, 0.5), (2, 0.25)]}
"""
from __future__ import annotations

import importlib.util
import math
import os
import struct
from typing import Any, Iterable

from etils import epath

EVENTS_PREFIX = "events.out.tfevents."
INSTALL_HINT = "pip install 'sparsejax[tensorboard]' (tensorboardX)"


def available() -> bool:
  """Whether tensorboardX can be imported (checked without importing it)."""
  return importlib.util.find_spec("tensorboardX") is not None


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
  """The numeric fields of a metrics record but `step`, nested dicts flattened to `outer/inner`; bools, strings,
  lists, None and non-finite numbers are left out."""
  out = {}
  for key, value in record.items():
    if not prefix and key == "step":
      continue
    if isinstance(value, dict):
      out.update(scalars(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      out[f"{prefix}{key}"] = float(value)
  return out


def event_files(logdir: Any) -> list[epath.Path]:
  path = epath.Path(logdir)
  return sorted(path.glob(f"{EVENTS_PREFIX}*")) if path.is_dir() else []


class EventWriter:
  """Writes metrics records to a fresh event file in `logdir`, after removing the old ones and writing `previous`."""

  def __init__(self, logdir: Any, previous: Iterable[dict] = ()):
    if not available():
      raise ImportError(f"config.training.tensorboard needs tensorboardX: {INSTALL_HINT}")
    import tensorboardX  # pylint: disable=g-import-not-at-top (an optional dependency)
    for old in event_files(logdir):
      old.unlink()
    self._writer = tensorboardX.SummaryWriter(os.fspath(logdir), flush_secs=10)
    for record in previous:
      self.write(record)

  def write(self, record: dict) -> None:
    for tag, value in scalars(record).items():
      self._writer.add_scalar(tag, value, global_step=int(record["step"]))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _records(data: bytes) -> Iterable[bytes]:
  """The records of a TFRecord file (u64 length, u32 crc of it, the data, u32 crc); a truncated tail is dropped."""
  offset = 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack_from("<Q", data, offset)
    end = offset + 12 + length + 4
    if end > len(data):
      return
    yield data[offset + 12:offset + 12 + length]
    offset = end


def read_scalars(logdir: Any) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every scalar in the event files of `logdir`, in file order (tensorboardX's
  protos parse the events)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top (an optional dependency)
  out: dict[str, list] = {}
  for path in event_files(logdir):
    for raw in _records(path.read_bytes()):
      event = event_pb2.Event.FromString(raw)
      for value in event.summary.value:
        if value.HasField("simple_value"):
          out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return dict(sorted(out.items()))
