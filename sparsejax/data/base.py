"""Datasets whose batches are pure functions of (seed, step), over in-memory arrays or random-access sources.

A `Dataset` holds one `Source` per split: raw examples (uint8 pixels, float signals) read by index, either numpy
arrays in memory (`ArraySource`) or a random-access reader such as a TFDS ArrayRecord data source. Raw examples are
turned into float32 model inputs batch by batch (`Normalizer`), so a 50k-image uint8 set stays 4x smaller in memory.

Training order: example position p = step * batch_size + i (i < batch_size) is example `permutation(p // N)[p % N]`
of the N train examples, with one permutation per epoch drawn from (seed, epoch). A batch that crosses an epoch
boundary is the tail of one permutation followed by the head of the next. Any step can therefore be produced without
replaying the earlier ones, which is what resuming and lottery-ticket rewinding rely on.

>>> import numpy as np
>>> source = ArraySource(np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10) % 2)
>>> ds = Dataset("toy", {"train": source, "test": source}, num_classes=2, seed=0)
>>> ds.train_batch(3, 4)["image"].shape, ds.steps_per_epoch(4)
((4, 1), 3)
"""
from __future__ import annotations

import math
from typing import Iterator, Mapping, NamedTuple, Optional, Protocol, Sequence, Union

import numpy as np

SPLITS = ("train", "validation", "test")
# The validation examples come from a fixed permutation, not from config.seed, so runs with different seeds are
# scored on the same held-out examples.
VALIDATION_SEED = 0
# Distinct streams for shuffling and augmentation drawn from the same (seed, step / epoch).
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1
_PERMUTATIONS_KEPT = 2  # a batch needs at most the current and next epoch unless batch_size > N
_CHUNK = 8192  # examples per read when computing statistics


class Source(Protocol):
  """Raw examples of one split, read by index."""

  def __len__(self) -> int:
    ...

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (raw inputs (B, *input_shape), int32 labels (B,)) of the examples at `indices`."""


class ArraySource:
  """A split held in memory as two numpy arrays."""

  def __init__(self, inputs: np.ndarray, labels: np.ndarray):
    if len(inputs) != len(labels):
      raise ValueError(f"{len(inputs)} inputs but {len(labels)} labels")
    self.inputs, self.labels = inputs, np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.inputs[indices], self.labels[indices]


class SubsetSource:
  """The examples `indices` of a random-access source (e.g. the train part left after a validation split)."""

  def __init__(self, source: Source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.source.read(self.indices[indices])


def subset(source: Source, indices: np.ndarray) -> Source:
  """`source` restricted to `indices`: copied arrays for in-memory sources, an index map otherwise."""
  if isinstance(source, ArraySource):
    return ArraySource(source.inputs[indices], source.labels[indices])
  return SubsetSource(source, indices)


def split_validation(train: Source, size: int) -> tuple[Source, Source]:
  """Splits `size` examples, chosen by a fixed permutation, off `train`; returns (rest of train, validation)."""
  n = len(train)
  if not 0 <= size < n:
    raise ValueError(f"config.data.validation_size: got {size}; accepted values: an int in [0, {n}) "
                     f"(the train split has {n} examples)")
  perm = np.random.default_rng(VALIDATION_SEED).permutation(n)
  return subset(train, np.sort(perm[:n - size])), subset(train, np.sort(perm[n - size:]))


class Normalizer(NamedTuple):
  """Raw inputs -> float32 model inputs: `(raw * scale - mean) / std`, mean and std scalar or per channel."""
  scale: float = 1.0
  mean: Union[float, Sequence[float]] = 0.0
  std: Union[float, Sequence[float]] = 1.0

  def __call__(self, raw: np.ndarray) -> np.ndarray:
    x = raw.astype(np.float32) * np.float32(self.scale)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)


def compute_stats(source: Source, scale: float, per_channel: bool,
                  indices: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std of `raw * scale` over `indices` (default: all) of `source`, per last axis or scalar.

  Accumulates sums in float64 chunk by chunk, so 60k MNIST-sized images never exist as one float64 array.
  """
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  total = total_sq = count = 0.0
  for start in range(0, len(indices), _CHUNK):
    x = source.read(indices[start:start + _CHUNK])[0].astype(np.float64) * scale
    x = x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(-1)
    total, total_sq, count = total + x.sum(axis=0), total_sq + np.square(x).sum(axis=0), count + x.shape[0]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  return mean, np.where(std > 0, std, 1.0)


def crop_and_flip(images: np.ndarray, rng: np.random.Generator, pad: int = 4, part: Optional[slice] = None,
                  total: Optional[int] = None) -> np.ndarray:
  """Random crops of NHWC `images` zero-padded by `pad` pixels, each flipped left-right with probability 1/2.

  The standard CIFAR augmentation (He et al., 2016, "Deep Residual Learning", Sec. 4.2), done with one gather.
  `images` may be rows `part` of a batch of `total`: the draws are those of the whole batch, so every process of a
  multi-host run augments its rows as one process would.
  """
  b, h, w = images.shape[:3]
  total = b if total is None else total
  part = slice(0, b) if part is None else part
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  rows = (rng.integers(0, 2 * pad + 1, size=(total, 1)) + np.arange(h))[part]
  cols = rng.integers(0, 2 * pad + 1, size=(total, 1)) + np.arange(w)
  cols = np.where(rng.random((total, 1)) < 0.5, cols[:, ::-1], cols)[part]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class Loaded(NamedTuple):
  """What a dataset loader returns: the official splits and how to turn raw inputs into model inputs (`normalizer`,
  any callable raw -> model inputs, such as `Normalizer` or the int32 token ids of `sparsejax.data.text`)."""
  train: Source
  test: Source
  num_classes: int
  input_shape: tuple
  normalizer: Normalizer
  validation: Optional[Source] = None  # a dataset's own validation split (else config.data.validation_size)


def _stream(seed: int, counter: int, stream: int) -> np.random.Generator:
  return np.random.default_rng([seed, counter, stream])


class Dataset:
  """A classification dataset with deterministic training batches and padded evaluation batches.

  Attributes:
    name: the dataset name from the config.
    num_classes: number of labels.
    input_shape: shape of one model input, e.g. (40,) or (28, 28, 1).
    seed: the seed the training order and augmentation derive from.
    normalizer: raw -> float32 inputs.
    augment: whether training batches get `crop_and_flip`.
  """

  def __init__(self, name: str, splits: Mapping[str, Source], num_classes: int, seed: int,
               normalizer: Normalizer = Normalizer(), augment: bool = False,
               input_shape: Optional[tuple] = None):
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or "train" not in splits or not len(splits["train"]):
      raise ValueError(f"splits must include a non-empty 'train' and come from {SPLITS}, got {sorted(splits)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    self.name, self.num_classes, self.seed = name, int(num_classes), int(seed)
    self.normalizer, self.augment = normalizer, bool(augment)
    self._sources = dict(splits)
    self.input_shape = tuple(input_shape or self._sources["train"].read(np.zeros(1, np.int64))[0].shape[1:])
    if self.augment and len(self.input_shape) != 3:
      raise ValueError(f"config.data.augment: crop-and-flip needs (H, W, C) images, {name} has inputs of shape "
                       f"{self.input_shape}; accepted values: False")
    self._permutations: dict[int, np.ndarray] = {}

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(s for s in SPLITS if s in self._sources)

  @property
  def num_train(self) -> int:
    return len(self._sources["train"])

  def num_examples(self, split: str) -> int:
    return len(self._source(split))

  def steps_per_epoch(self, batch_size: int) -> int:
    """Steps that cover every train example at least once: ceil(num_train / batch_size)."""
    return math.ceil(self.num_train / _positive(batch_size, "batch_size"))

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of the train examples in `epoch`, a function of (seed, epoch) only."""
    if epoch not in self._permutations:
      if len(self._permutations) >= _PERMUTATIONS_KEPT:
        del self._permutations[min(self._permutations)]
      self._permutations[epoch] = _stream(self.seed, epoch, _SHUFFLE_STREAM).permutation(self.num_train)
    return self._permutations[epoch]

  def train_indices(self, step: int, batch_size: int) -> np.ndarray:
    """Indices into the train split of the examples of `step`, concatenating across epoch boundaries."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    position, remaining, pieces = int(step) * _positive(batch_size, "batch_size"), batch_size, []
    while remaining:
      epoch, offset = divmod(position, self.num_train)
      piece = self.permutation(epoch)[offset:offset + remaining]
      pieces.append(piece)
      position, remaining = position + len(piece), remaining - len(piece)
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

  def train_batch(self, step: int, batch_size: int, rows: Optional[slice] = None) -> dict[str, np.ndarray]:
    """{"image": float32 (B, *input_shape), "label": int32 (B,)} of training step `step` (int32 tokens and (B, T)
    next-token labels for a language-model dataset); only rows `rows` of it
    (what one process of a multi-host run reads) when given."""
    rows = slice(0, batch_size) if rows is None else rows
    inputs, labels = self._sources["train"].read(self.train_indices(step, batch_size)[rows])
    if self.augment:
      inputs = crop_and_flip(inputs, _stream(self.seed, step, _AUGMENT_STREAM), part=rows, total=batch_size)
    return {"image": self.normalizer(inputs), "label": labels}

  def eval_batches(self, split: str, batch_size: int,
                   rows: Optional[slice] = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `split` in order, the last one padded with zeros; "mask" (bool (B,)) marks real examples. With
    `rows`, only those rows of each batch (one process's part)."""
    source, batch_size = self._source(split), _positive(batch_size, "batch_size")
    lo, hi, _ = (slice(0, batch_size) if rows is None else rows).indices(batch_size)
    for start in range(0, len(source), batch_size):
      first, last = min(start + lo, len(source)), min(start + hi, len(source))
      want, real = hi - lo, max(last - first, 0)
      pad = want - real
      if real:
        inputs, labels = source.read(np.arange(first, last))
      else:  # this process's rows of the last batch are all padding: an empty read of one example's shapes
        inputs, labels = (a[:0] for a in source.read(np.zeros(1, np.int64)))
      images = self.normalizer(inputs)
      # Padding keeps the dtypes and the per-example shapes (token labels are (B, T), not (B,)).
      yield {"image": np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)]) if pad else images,
             "label": np.concatenate([labels, np.zeros((pad, *labels.shape[1:]), labels.dtype)]) if pad else labels,
             "mask": np.arange(want) < real}

  def _source(self, split: str) -> Source:
    if split not in self._sources:
      raise ValueError(f"split {split!r} is not in dataset {self.name}; accepted values: {list(self.splits)}")
    return self._sources[split]

  def __repr__(self) -> str:
    sizes = ", ".join(f"{s}={self.num_examples(s)}" for s in self.splits)
    return (f"Dataset({self.name}: {sizes}, input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"augment={self.augment})")


def _positive(value: int, what: str) -> int:
  if int(value) != value or value < 1:
    raise ValueError(f"{what} must be an int >= 1, got {value!r}")
  return int(value)
