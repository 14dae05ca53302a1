"""Datasets by name from `config.data`: the one place a dataset name and source are resolved.

Built-in names (`DATASETS`): "mnist1d" (generated locally), "digits" (scikit-learn), "mnist" and "fashion_mnist" (IDX
files, else TFDS), "pydocs" (the Python documentation as byte-level language-model windows, `text`). Any other name,
and any name with source="tfds", is read from TFDS (`tfds_source`).

>>> ds = create_dataset({"name": "mnist1d"}, seed=0)
>>> ds.num_train, ds.input_shape, ds.num_classes, ds.splits
(4000, (40,), 10, ('train', 'test'))
>>> ds.train_batch(step=0, batch_size=32)["image"].shape
(32, 40)
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping, NamedTuple

from sparsejax.data import offline, text, tfds_source
from sparsejax.data.base import (SPLITS, ArraySource, Dataset, Loaded, Normalizer, Source, SubsetSource,
                                 crop_and_flip, split_validation)

# Fields every dataset accepts, with their defaults (configs/default.py writes the same values).
COMMON_OPTIONS = {"name": "mnist1d", "source": "auto", "data_dir": None, "validation_size": 0, "normalize": True}
SOURCES = ("auto", "idx", "tfds")
IMAGE_OPTIONS = {"augment": False}


class DatasetEntry(NamedTuple):
  """A built-in dataset: `load(options) -> Loaded` and the config fields only it accepts, with their defaults."""
  load: Callable[[dict], Loaded]
  options: Mapping[str, Any]


def _load_idx(opts: dict) -> Loaded:
  directory = opts["data_dir"] or offline.IDX_DIRS.get(opts["name"])
  return offline.load_idx(opts["name"], directory, opts["normalize"])


def _load_idx_or_tfds(opts: dict) -> Loaded:
  """IDX files when the directory holds them, else TFDS when it has the dataset prepared, else how to get it."""
  name, directory = opts["name"], opts["data_dir"] or offline.IDX_DIRS.get(opts["name"])
  found, missing = offline.find_idx_files(directory)
  if not missing:
    return offline.load_idx(name, directory, opts["normalize"])
  if tfds_source.is_prepared(name, opts["data_dir"]):
    return tfds_source.load_tfds(name, opts)
  raise FileNotFoundError(offline.idx_missing_message(name, directory, missing))


def _load_tfds(opts: dict) -> Loaded:
  try:
    return tfds_source.load_tfds(opts["name"], opts)
  except tfds_source.DatasetNotFound as e:
    raise ValueError(f"config.data.name: {opts['name']!r} is not a built-in dataset ({sorted(DATASETS)}), so it "
                     f"was looked up in TFDS: {e}") from e


DATASETS: dict[str, DatasetEntry] = {
    "mnist1d": DatasetEntry(offline.load_mnist1d, offline.MNIST1D_OPTIONS),
    "digits": DatasetEntry(offline.load_digits, IMAGE_OPTIONS),
    "mnist": DatasetEntry(_load_idx_or_tfds, tfds_source.TFDS_OPTIONS),
    "fashion_mnist": DatasetEntry(_load_idx_or_tfds, tfds_source.TFDS_OPTIONS),
    "pydocs": DatasetEntry(text.load_pydocs, text.TEXT_OPTIONS),
}
_BY_SOURCE = {"idx": DatasetEntry(_load_idx, IMAGE_OPTIONS), "tfds": DatasetEntry(_load_tfds, tfds_source.TFDS_OPTIONS)}


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


_CHECKS = {  # field -> (accepts(value), accepted values in words)
    "name": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "source": (lambda v: v in SOURCES, f"one of {list(SOURCES)}"),
    "data_dir": (lambda v: v is None or isinstance(v, (str, os.PathLike)), "None or a directory path"),
    "validation_size": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "normalize": (lambda v: isinstance(v, bool), "True or False"),
    "augment": (lambda v: isinstance(v, bool), "True or False"),
    "in_memory": (lambda v: v is None or isinstance(v, bool), "None (decide by size), True or False"),
    "num_samples": (lambda v: _is_int(v) and v >= 20, "an int >= 20"),
    "train_split": (lambda v: isinstance(v, float) and 0 < v < 1, "a float in (0, 1)"),
    "data_seed": (lambda v: v is None or (_is_int(v) and 0 <= v < 2**32), "None (the package's seed) or an int "
                  "in [0, 2**32)"),
    "context": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "eval_windows": (lambda v: v is None or (_is_int(v) and v >= 1), "None (every window) or an int >= 1"),
}


def resolve_options(data_config: Any) -> tuple[DatasetEntry, dict]:
  """The loader for `data_config` and its fields with defaults filled in, checked before anything is read.

  Raises:
    ValueError: an unknown field or a bad value, naming the field and the accepted values.
  """
  if hasattr(data_config, "to_dict"):
    data_config = data_config.to_dict()
  if not isinstance(data_config, Mapping):
    raise ValueError(f"config.data: expected a ConfigDict or a dict, got {type(data_config).__name__}")
  name, source = data_config.get("name", COMMON_OPTIONS["name"]), data_config.get("source", "auto")
  for field, value in (("name", name), ("source", source)):
    if not _CHECKS[field][0](value):
      raise ValueError(f"config.data.{field}: got {value!r}; accepted values: {_CHECKS[field][1]}")
  entry = _BY_SOURCE[source] if source != "auto" else DATASETS.get(name, _BY_SOURCE["tfds"])
  opts = {**COMMON_OPTIONS, **entry.options}
  for field, value in data_config.items():
    if value is None and (field not in opts or opts[field] is not None):
      continue  # None: the dataset's default (configs/default.py lists every dataset's options as None)
    if field not in opts:
      raise ValueError(f"config.data.{field}: unknown field for dataset {name!r} with source {source!r}; accepted "
                       f"fields are {sorted(opts)}")
    if not _CHECKS[field][0](value):
      raise ValueError(f"config.data.{field}: got {value!r}; accepted values: {_CHECKS[field][1]}")
    opts[field] = value
  if opts["data_dir"] is not None:
    opts["data_dir"] = os.path.expanduser(os.fspath(opts["data_dir"]))
  return entry, opts


def create_dataset(data_config: Any, seed: int) -> Dataset:
  """Builds the dataset `data_config` describes.

  Args:
    data_config: `config.data`, a ConfigDict or dict: name, source ("auto" | "idx" | "tfds"), data_dir,
      validation_size, normalize, and per-dataset fields (mnist1d: num_samples, train_split, data_seed; image
      datasets: augment; TFDS: in_memory; pydocs: context, eval_windows). Missing fields take the defaults in
      `COMMON_OPTIONS` / `DATASETS`.
    seed: the run's seed (config.seed); the training order and augmentation are functions of it and the step.

  Returns:
    A `Dataset` with splits "train", "test" and "validation" when the dataset has one (pydocs) or validation_size > 0
    (split off the train set).

  Raises:
    ValueError: bad config (named field and accepted values) or an unknown dataset name.
    FileNotFoundError: the data is not on this machine; the message says how to get it.
  """
  if not _is_int(seed) or seed < 0:
    raise ValueError(f"config.seed: got {seed!r}; accepted values: an int >= 0")
  entry, opts = resolve_options(data_config)
  loaded = entry.load(opts)
  splits = {"train": loaded.train, "test": loaded.test}
  if loaded.validation is not None:
    if opts["validation_size"]:
      raise ValueError(f"config.data.validation_size: got {opts['validation_size']}, but {opts['name']} has its own "
                       "validation split; accepted values: 0")
    splits["validation"] = loaded.validation
  elif opts["validation_size"]:
    splits["train"], splits["validation"] = split_validation(loaded.train, opts["validation_size"])
  return Dataset(opts["name"], splits, loaded.num_classes, seed, loaded.normalizer,
                 augment=opts.get("augment", False), input_shape=loaded.input_shape)


__all__ = [
    "ArraySource", "COMMON_OPTIONS", "create_dataset", "crop_and_flip", "Dataset", "DatasetEntry", "DATASETS",
    "Loaded", "Normalizer", "resolve_options", "SOURCES", "Source", "SPLITS", "split_validation", "SubsetSource",
]
