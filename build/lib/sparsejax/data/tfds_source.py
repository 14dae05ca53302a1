"""TFDS datasets, read without TensorFlow through `tfds.data_source` (ArrayRecord files, random access by index).

Splits whose decoded arrays fit in `IN_MEMORY_BYTES` (CIFAR-10: 150 MB of uint8) are read once into memory, larger
ones stay random-access sources read batch by batch (`config.data.in_memory` forces either). A dataset prepared only
as TFRecord needs TensorFlow: when it is importable the splits are loaded into memory with `tfds.load(batch_size=-1)`,
otherwise the error says how to convert or rebuild the files.

Features used: "image" (any fixed shape; uint8 pixels are scaled to [0, 1]) and "label" (a ClassLabel). Inputs are
standardised per channel with the usual CIFAR-10 statistics, or with statistics of a fixed sample of the train split.
"""
from __future__ import annotations

import difflib
import importlib.util
from typing import Optional

import numpy as np

from sparsejax.data.base import ArraySource, Loaded, Normalizer, compute_stats

IN_MEMORY_BYTES = 2 << 30
STATS_SAMPLE = 10_000
_READ_CHUNK = 4096
# Per-channel mean / std of the CIFAR-10 train images in [0, 1], as used throughout the pruning literature.
KNOWN_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))}
TFDS_OPTIONS = {"augment": False, "in_memory": None}


class DatasetNotFound(ValueError):
  """TFDS has no dataset of that name."""


class TfdsSource:
  """One split of a TFDS data source, decoded one example per index."""

  def __init__(self, data_source, image_key: str = "image", label_key: str = "label"):
    self.data_source, self.image_key, self.label_key = data_source, image_key, label_key

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Indexing one example at a time: `__getitems__` is faster on real ArrayRecord files, but the
    # `tfds.testing.mock_data` source of tfds 4.9.10 does not bind it, and decoding dominates the cost anyway.
    examples = [self.data_source[int(i)] for i in indices]
    return (np.stack([np.asarray(e[self.image_key]) for e in examples]),
            np.asarray([e[self.label_key] for e in examples], np.int32))


def to_memory(source) -> ArraySource:
  """Reads every example of `source` into numpy arrays."""
  parts = [source.read(np.arange(s, min(s + _READ_CHUNK, len(source)))) for s in range(0, len(source), _READ_CHUNK)]
  return ArraySource(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def _import_tfds():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


def builder(name: str, data_dir: Optional[str]):
  """`tfds.builder(name)`, with an unknown name turned into `DatasetNotFound` naming close TFDS names."""
  tfds = _import_tfds()
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError as e:
    close = difflib.get_close_matches(name, tfds.list_builders(with_community_datasets=False), n=3)
    hint = f" (close TFDS names: {close})" if close else ""
    raise DatasetNotFound(f"TFDS has no dataset {name!r}{hint}; see https://www.tensorflow.org/datasets/catalog/"
                          "overview") from e


def is_prepared(name: str, data_dir: Optional[str]) -> bool:
  """Whether TFDS has `name` prepared in `data_dir` (default: TFDS's own data dir)."""
  try:
    return builder(name, data_dir).is_prepared()
  except DatasetNotFound:
    return False


def not_prepared_message(name: str, looked_in: str, data_dir: Optional[str]) -> str:
  flag = f" --data_dir={data_dir}" if data_dir else ""
  return (f"TFDS dataset {name!r} is not prepared (looked in {looked_in}). Prepare it once with\n"
          f"  tfds build {name} --file_format=array_record{flag}\n"
          f"or in Python: tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare("
          "file_format='array_record'); array_record files are read without TensorFlow (generating them may need "
          "TensorFlow: pip install -e '.[tf]'). Set config.data.data_dir if the data lives elsewhere.")


def _open_splits(name: str, splits: tuple[str, ...], data_dir: Optional[str], ds_builder) -> dict:
  """{split: source}: data sources when possible, else in-memory arrays through TensorFlow."""
  tfds = _import_tfds()
  try:
    return {s: TfdsSource(tfds.data_source(name, split=s, data_dir=data_dir, download=False)) for s in splits}
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises several types; each is diagnosed below)
    if not ds_builder.is_prepared():
      raise FileNotFoundError(not_prepared_message(name, str(ds_builder.data_dir), data_dir)) from e
    file_format = str(ds_builder.info.file_format)
    if "tfrecord" not in file_format.lower():
      raise
    if importlib.util.find_spec("tensorflow") is None:
      raise FileNotFoundError(
          f"TFDS dataset {name!r} is prepared in {ds_builder.data_dir} as {file_format}, which only TensorFlow can "
          "read. Install the tf extra (pip install -e '.[tf]'), or convert it to array_record with\n"
          f"  tfds convert_format --dataset_version_dir={ds_builder.data_dir} --out_file_format=array_record") from e
  data = {s: tfds.as_numpy(tfds.load(name, split=s, data_dir=data_dir, batch_size=-1, download=False))
          for s in splits}
  return {s: ArraySource(d["image"], d["label"]) for s, d in data.items()}


def _features(name: str, info) -> tuple[tuple, int, np.dtype]:
  """(input shape, num_classes, pixel dtype) from the dataset's features, checking that they fit a classifier."""
  features = info.features
  if features is None or "image" not in features or "label" not in features:
    keys = sorted(features.keys()) if features is not None else []
    raise ValueError(f"config.data.name: TFDS dataset {name!r} has features {keys}; sparsejax needs 'image' and "
                     "'label'")
  shape, num_classes = tuple(features["image"].shape), getattr(features["label"], "num_classes", None)
  if None in shape or not num_classes:
    raise ValueError(f"config.data.name: TFDS dataset {name!r} has images of shape {shape} and {num_classes} "
                     "classes; sparsejax needs fixed-size images and a ClassLabel label")
  return shape, int(num_classes), np.dtype(getattr(features["image"], "np_dtype", np.uint8))


def _normalizer(name: str, train, scale: float, normalize: bool) -> Normalizer:
  if not normalize:
    return Normalizer(scale=scale)
  if name in KNOWN_STATS:
    return Normalizer(scale, *KNOWN_STATS[name])
  n = len(train)
  sample = np.sort(np.random.default_rng(0).choice(n, min(n, STATS_SAMPLE), replace=False))
  mean, std = compute_stats(train, scale, per_channel=True, indices=sample)
  return Normalizer(scale, tuple(mean.tolist()), tuple(std.tolist()))


def load_tfds(name: str, opts: dict) -> Loaded:
  """A TFDS classification dataset: splits "train" and "test" (or "validation" where there is no test split).

  Raises:
    DatasetNotFound: TFDS does not know `name`.
    FileNotFoundError: the data is not prepared (or only as TFRecord without TensorFlow), saying how to fix it.
  """
  ds_builder = builder(name, opts["data_dir"])
  shape, num_classes, dtype = _features(name, ds_builder.info)
  known = list(ds_builder.info.splits.keys()) if ds_builder.info.splits else []
  test_split = "validation" if known and "test" not in known and "validation" in known else "test"
  if known and ("train" not in known or test_split not in known):
    raise ValueError(f"config.data.name: TFDS dataset {name!r} has splits {known}; sparsejax needs 'train' and "
                     "'test' (or 'validation')")
  sources = _open_splits(name, ("train", test_split), opts["data_dir"], ds_builder)
  in_memory = opts["in_memory"]
  if in_memory is None:
    in_memory = len(sources["train"]) * int(np.prod(shape)) * dtype.itemsize <= IN_MEMORY_BYTES
  if in_memory:
    sources = {s: src if isinstance(src, ArraySource) else to_memory(src) for s, src in sources.items()}
  scale = 1 / 255 if dtype == np.uint8 else 1.0
  return Loaded(sources["train"], sources[test_split], num_classes, shape,
                _normalizer(name, sources["train"], scale, opts["normalize"]))
