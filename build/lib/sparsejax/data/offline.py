"""Datasets that need no TFDS: MNIST-1D (generated here), IDX directories (MNIST, Fashion-MNIST), sklearn digits.

Every loader takes the resolved `config.data` dict and returns a `base.Loaded`; all keep the raw examples in memory.
"""
from __future__ import annotations

import gzip
import os
import random
import struct
from typing import Optional

import numpy as np

from sparsejax.data.base import ArraySource, Loaded, Normalizer, compute_stats

# Config fields only MNIST-1D accepts. data_seed None keeps the mnist1d package's own seed (42), which is what the
# published MNIST-1D arrays were generated with (Greydanus & Kobak, 2024, "Scaling Down Deep Learning with MNIST-1D").
MNIST1D_OPTIONS = {"num_samples": 5000, "train_split": 0.8, "data_seed": None}
# Where a distribution package puts the IDX files; Debian's `dataset-fashion-mnist` installs the first.
IDX_DIRS = {"fashion_mnist": "/usr/share/datasets/fashion-mnist", "mnist": None}
IDX_STEMS = {  # (split, part) -> file name as distributed, before the optional .gz
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); multi-byte values are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


def _generate_mnist1d(num_samples: int, train_split: float, seed: Optional[int]) -> dict:
  """Runs `mnist1d.data.make_dataset`, which seeds and draws from the global `random` / `np.random` state.

  That global state is saved and restored, so generating MNIST-1D does not change other users' random streams.
  """
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=import-outside-toplevel
  args = get_dataset_args()
  args.num_samples, args.train_split = num_samples, train_split
  if seed is not None:
    args.seed = seed
  py_state, np_state = random.getstate(), np.random.get_state()
  try:
    data = make_dataset(args)
  finally:
    random.setstate(py_state)
    np.random.set_state(np_state)
  return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


def load_mnist1d(opts: dict) -> Loaded:
  """MNIST-1D: 40-sample 1-D signals of the 10 digits; 4000 train / 1000 test examples by default.

  `make_dataset` already centres the signals and scales them to unit std with one scalar mean and std over the whole
  set, and the MNIST-1D notebooks train on those arrays as they are (no per-feature standardisation). We do the same:
  the arrays are used unchanged and `normalize` has nothing left to do here. With `data_dir` set, the generated arrays
  are cached there as .npz (keyed by num_samples, train_split and seed); nothing is written otherwise.
  """
  num_samples, train_split, seed = opts["num_samples"], opts["train_split"], opts["data_seed"]
  cache = None
  if opts["data_dir"]:
    tag = f"{num_samples}_{train_split}_{'default' if seed is None else seed}"
    cache = os.path.join(opts["data_dir"], f"mnist1d_{tag}.npz")
  if cache and os.path.exists(cache):
    with np.load(cache) as f:
      data = dict(f)
  else:
    data = _generate_mnist1d(num_samples, train_split, seed)
    if cache:
      os.makedirs(opts["data_dir"], exist_ok=True)
      partial = cache + f".{os.getpid()}.tmp.npz"
      np.savez(partial, **data)
      os.replace(partial, cache)  # atomic: a concurrent run never reads a half-written file
  if not len(data["y"]) or not len(data["y_test"]):
    raise ValueError(f"config.data.train_split: {train_split} with num_samples={num_samples} leaves an empty split")
  return Loaded(train=ArraySource(data["x"].astype(np.float32), data["y"]),
                test=ArraySource(data["x_test"].astype(np.float32), data["y_test"]),
                num_classes=10, input_shape=(data["x"].shape[1],), normalizer=Normalizer())


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (gzip-compressed when the name ends in .gz) into a native-endian numpy array."""
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path}: not an IDX file (magic number {data[:4].hex()})")
  ndim, header = data[3], 4 + 4 * data[3]
  shape = struct.unpack(f">{ndim}I", data[4:header])
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  if len(data) != header + int(np.prod(shape)) * dtype.itemsize:
    raise ValueError(f"{path}: {len(data) - header} data bytes, but the header declares shape {shape} of {dtype}")
  array = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else array


def find_idx_files(directory: Optional[str]) -> tuple[dict, list]:
  """({(split, part): path} of the IDX files found in `directory`, [names of the missing ones]).

  Accepts the distributed names with or without .gz, and the `train-images.idx3-ubyte` spelling some unpackers
  produce.
  """
  found, missing = {}, []
  for key, stem in IDX_STEMS.items():
    names = [n + ext for n in (stem, stem.replace("-idx", ".idx", 1)) for ext in (".gz", "")]
    paths = [os.path.join(directory, n) for n in names] if directory else []
    hits = [p for p in paths if os.path.isfile(p)]
    if hits:
      found[key] = hits[0]
    else:
      missing.append(stem + "[.gz]")
  return found, missing


def idx_missing_message(name: str, directory: Optional[str], missing: list) -> str:
  """How to get the IDX files of `name` when `missing` of them are not in `directory`."""
  where = f"not found in {directory}" if directory else "no directory given"
  ways = []
  if name == "fashion_mnist":
    ways.append(f"sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs them in {IDX_DIRS[name]})")
  ways.append("set config.data.data_dir to a directory holding " + ", ".join(f"{s}.gz" for s in IDX_STEMS.values())
              + " (gzip or uncompressed)")
  ways.append(f"install the tf extra (pip install -e '.[tf]'), prepare the data with `tfds build {name}` and set "
              "config.data.source='tfds'")
  return (f"{name}: IDX files {where} (missing: {', '.join(missing)}). Get them in one of these ways:\n  - "
          + "\n  - ".join(ways))


def load_idx(name: str, directory: Optional[str], normalize: bool) -> Loaded:
  """An IDX dataset (MNIST layout): uint8 images kept raw, labels from the label files.

  Model inputs are float32 (N, H, W, 1) in [0, 1], standardised (normalize=True) by the scalar mean and std of the
  full official train split, so the preprocessing does not change with validation_size.

  Raises:
    FileNotFoundError: files missing, with the ways to get them.
  """
  found, missing = find_idx_files(directory)
  if missing:
    raise FileNotFoundError(idx_missing_message(name, directory, missing))
  splits = {}
  for split in ("train", "test"):
    images, labels = read_idx(found[split, "images"]), read_idx(found[split, "labels"])
    if images.ndim not in (3, 4) or labels.ndim != 1 or len(images) != len(labels):
      raise ValueError(f"{name} {split}: images {images.shape} and labels {labels.shape} do not match "
                       f"({found[split, 'images']}, {found[split, 'labels']})")
    splits[split] = ArraySource(images[..., None] if images.ndim == 3 else images, labels)
  num_classes = 10 if name in IDX_DIRS else int(max(s.labels.max() for s in splits.values())) + 1
  return Loaded(splits["train"], splits["test"], num_classes, splits["train"].inputs.shape[1:],
                _scalar_normalizer(splits["train"], 1 / 255, normalize))


def load_digits(opts: dict) -> Loaded:
  """scikit-learn's 8x8 digits (1797 images, 10 classes, pixel values 0..16) as (8, 8, 1) images.

  The test split is the last 20% of a fixed-seed permutation (359 images; 1438 train), the same for every
  config.seed. Inputs are scaled to [0, 1] and standardised (normalize=True) by the train split's scalar mean/std.
  """
  from sklearn.datasets import load_digits as sklearn_digits  # pylint: disable=import-outside-toplevel
  data = sklearn_digits()
  images = data.images.astype(np.uint8)[..., None]  # the values are the integers 0..16
  order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
  num_test = int(round(len(images) * DIGITS_TEST_FRACTION))
  train = ArraySource(images[order[:-num_test]], data.target[order[:-num_test]])
  test = ArraySource(images[order[-num_test:]], data.target[order[-num_test:]])
  return Loaded(train, test, 10, (8, 8, 1), _scalar_normalizer(train, 1 / 16, opts["normalize"]))


def _scalar_normalizer(train: ArraySource, scale: float, normalize: bool) -> Normalizer:
  if not normalize:
    return Normalizer(scale=scale)
  mean, std = compute_stats(train, scale, per_channel=False)
  return Normalizer(scale=scale, mean=float(mean), std=float(std))
