"""Tests of sparsejax.data: MNIST-1D, IDX files, digits, TFDS (mocked and a real ArrayRecord build), batching."""
import gzip
import os
import struct
import tempfile

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from sparsejax.data import ArraySource, Dataset, Normalizer, SubsetSource, create_dataset, crop_and_flip, offline
from sparsejax.data import tfds_source

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _tfds_temp_dirs_in_tmp_path(tmp_path, monkeypatch):
  # tfds 4.9.10 leaves an empty mkdtemp() folder behind for every builder of an unprepared dataset
  # (DatasetInfo.initialize_from_bucket); keep them inside pytest's own temporary directory.
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def mnist1d():
  return create_dataset(default.get_config().data, seed=0)  # a ConfigDict with a placeholder data_dir


def _all(ds, split, batch_size=1000):
  batches = list(ds.eval_batches(split, batch_size))
  mask = np.concatenate([b["mask"] for b in batches])
  return np.concatenate([b["image"] for b in batches])[mask], np.concatenate([b["label"] for b in batches])[mask]


def _toy(n=10, seed=0, **kwargs):
  source = ArraySource(np.arange(n, dtype=np.float32).reshape(n, 1), np.arange(n) % 3)
  return Dataset("toy", {"train": source, "test": source}, num_classes=3, seed=seed, **kwargs)


# MNIST-1D ------------------------------------------------------------------------------------------------------------

def test_mnist1d_shapes_and_classes(mnist1d):
  assert (mnist1d.num_train, mnist1d.num_examples("test")) == (4000, 1000)
  assert mnist1d.input_shape == (40,) and mnist1d.num_classes == 10 and mnist1d.splits == ("train", "test")
  x, y = _all(mnist1d, "train")
  assert x.dtype == np.float32 and y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
  # make_dataset standardises with one scalar over train + test; we leave the arrays as the notebooks do.
  assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05


def test_mnist1d_matches_package_and_keeps_global_rng():
  from mnist1d.data import get_dataset_args, make_dataset
  np.random.seed(123)
  before = np.random.get_state()[1].copy()
  ds = create_dataset({"name": "mnist1d", "num_samples": 500}, seed=0)
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  args = get_dataset_args()
  args.num_samples = 500
  ref = make_dataset(args)
  x, y = _all(ds, "train")
  np.testing.assert_array_equal(x, ref["x"].astype(np.float32))
  np.testing.assert_array_equal(y, ref["y"])
  assert ds.num_examples("test") == 100


def test_mnist1d_data_seed_and_cache(tmp_path):
  config = {"name": "mnist1d", "num_samples": 200, "data_seed": 7, "data_dir": str(tmp_path / "cache")}
  first = _all(create_dataset(config, seed=0), "train")[0]
  assert os.listdir(tmp_path / "cache") == ["mnist1d_200_0.8_7.npz"]
  np.testing.assert_array_equal(first, _all(create_dataset(config, seed=0), "train")[0])  # from the cache
  other = _all(create_dataset({"name": "mnist1d", "num_samples": 200}, seed=0), "train")[0]
  assert not np.array_equal(first, other)


# IDX files -----------------------------------------------------------------------------------------------------------

def _write_idx(path, array, code=0x08):
  header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  with (gzip.open if path.endswith(".gz") else open)(path, "wb") as f:
    f.write(data)


def _idx_dir(tmp_path, gz):
  rng = np.random.default_rng(1)
  arrays = {"train": (rng.integers(0, 256, (6, 3, 4), dtype=np.uint8), np.array([0, 1, 2, 3, 9, 5], np.uint8)),
            "test": (rng.integers(0, 256, (2, 3, 4), dtype=np.uint8), np.array([7, 8], np.uint8))}
  ext = ".gz" if gz else ""
  for split, (images, labels) in arrays.items():
    _write_idx(str(tmp_path / f"{offline.IDX_STEMS[split, 'images']}{ext}"), images)
    _write_idx(str(tmp_path / f"{offline.IDX_STEMS[split, 'labels']}{ext}"), labels)
  return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_values_exact(tmp_path, gz):
  arrays = _idx_dir(tmp_path, gz)
  ds = create_dataset({"name": "mnist", "data_dir": str(tmp_path), "normalize": False}, seed=0)
  assert ds.input_shape == (3, 4, 1) and ds.num_classes == 10 and ds.num_train == 6
  for split, (images, labels) in arrays.items():
    x, y = _all(ds, split)
    np.testing.assert_array_equal(x, images[..., None].astype(np.float32) * np.float32(1 / 255))
    np.testing.assert_array_equal(y, labels)
  normed = create_dataset({"name": "mnist", "data_dir": str(tmp_path), "source": "idx"}, seed=0)
  train = arrays["train"][0] / 255
  assert normed.normalizer.mean == pytest.approx(train.mean()) and normed.normalizer.std == pytest.approx(train.std())
  x = _all(normed, "train")[0]
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5


def test_read_idx_dtypes_names_and_errors(tmp_path):
  values = np.array([[1, -2], [70000, 3]], np.int32)
  _write_idx(str(tmp_path / "a.idx"), values, code=0x0C)
  np.testing.assert_array_equal(offline.read_idx(str(tmp_path / "a.idx")), values)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x00")
  with pytest.raises(ValueError, match="not an IDX file"):
    offline.read_idx(str(tmp_path / "bad"))
  (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"\x00\x01")
  with pytest.raises(ValueError, match="header declares shape"):
    offline.read_idx(str(tmp_path / "short"))
  _idx_dir(tmp_path, gz=False)
  os.rename(tmp_path / "train-images-idx3-ubyte", tmp_path / "train-images.idx3-ubyte")
  found, missing = offline.find_idx_files(str(tmp_path))
  assert not missing and found["train", "images"].endswith("train-images.idx3-ubyte")


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"{FASHION_DIR} absent (apt-get install "
                    "dataset-fashion-mnist)")
def test_real_fashion_mnist():
  ds = create_dataset({"name": "fashion_mnist"}, seed=0)
  assert (ds.num_train, ds.num_examples("test"), ds.input_shape, ds.num_classes) == (60000, 10000, (28, 28, 1), 10)
  assert ds.normalizer.mean == pytest.approx(0.2860, abs=1e-4) and ds.normalizer.std == pytest.approx(0.3530, abs=1e-4)
  np.testing.assert_array_equal(np.bincount(ds._source("train").labels), np.full(10, 6000))
  batch = ds.train_batch(10, 256)
  assert batch["image"].shape == (256, 28, 28, 1) and batch["image"].dtype == np.float32


def test_fashion_mnist_missing_message(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    create_dataset({"name": "fashion_mnist", "data_dir": str(tmp_path)}, seed=0)
  for text in ("apt-get install dataset-fashion-mnist", "config.data.data_dir", "source='tfds'", str(tmp_path),
               "train-images-idx3-ubyte"):
    assert text in str(e.value)
  with pytest.raises(FileNotFoundError, match="no directory given"):
    create_dataset({"name": "mnist", "source": "idx"}, seed=0)


# digits --------------------------------------------------------------------------------------------------------------

def test_digits():
  a, b = create_dataset({"name": "digits"}, seed=0), create_dataset({"name": "digits"}, seed=5)
  assert (a.num_train, a.num_examples("test"), a.input_shape, a.num_classes) == (1438, 359, (8, 8, 1), 10)
  for split in ("train", "test"):  # the split does not depend on the run's seed
    np.testing.assert_array_equal(_all(a, split)[0], _all(b, split)[0])
  x = _all(a, "train")[0]
  assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4
  raw = _all(create_dataset({"name": "digits", "normalize": False}, seed=0), "test")[0]
  assert raw.min() == 0 and raw.max() == 1


# training order ------------------------------------------------------------------------------------------------------

def test_train_batch_is_a_pure_function_of_seed_and_step():
  a, b = _toy(seed=3), _toy(seed=3)
  later_first = [b.train_batch(s, 4)["label"] for s in (7, 2, 0)]
  np.testing.assert_array_equal(later_first, [a.train_batch(s, 4)["label"] for s in (7, 2, 0)])
  assert not np.array_equal(_toy(seed=4).permutation(0), a.permutation(0))
  assert not np.array_equal(a.permutation(0), a.permutation(1))


@pytest.mark.parametrize("batch_size", [5, 4, 25])
def test_every_example_once_per_epoch_and_straddling(batch_size):
  ds, n = _toy(), 10
  positions = np.concatenate([ds.train_indices(s, batch_size) for s in range(40 // batch_size + 1)])
  for epoch in range(len(positions) // n):
    chunk = positions[epoch * n:(epoch + 1) * n]
    np.testing.assert_array_equal(np.sort(chunk), np.arange(n))
    np.testing.assert_array_equal(chunk, ds.permutation(epoch))
  if batch_size == 4:  # step 2 covers positions 8..11: the tail of epoch 0, then the head of epoch 1
    expected = np.concatenate([ds.permutation(0)[8:], ds.permutation(1)[:2]])
    np.testing.assert_array_equal(ds.train_indices(2, 4), expected)
  batch = ds.train_batch(2, batch_size)
  np.testing.assert_array_equal(batch["image"][:, 0], ds.train_indices(2, batch_size))
  assert batch["label"].dtype == np.int32 and ds.steps_per_epoch(batch_size) == -(-n // batch_size)


def test_eval_batches_padding_and_mask():
  ds = _toy()
  batches = list(ds.eval_batches("test", 4))
  assert [b["image"].shape for b in batches] == [(4, 1)] * 3
  np.testing.assert_array_equal(batches[-1]["mask"], [True, True, False, False])
  np.testing.assert_array_equal(batches[-1]["image"][2:], 0)
  np.testing.assert_array_equal(_all(ds, "test", 4)[1], np.arange(10) % 3)
  with pytest.raises(ValueError, match="accepted values: \\['train', 'test'\\]"):
    next(ds.eval_batches("validation", 4))


def test_validation_split():
  config = {"name": "mnist1d", "num_samples": 500, "validation_size": 50}
  ds, other_seed = create_dataset(config, seed=0), create_dataset(config, seed=1)
  full = create_dataset(dict(config, validation_size=0), seed=0)
  assert ds.splits == ("train", "validation", "test") and (ds.num_train, ds.num_examples("validation")) == (350, 50)
  train, val, full = _all(ds, "train")[0], _all(ds, "validation")[0], _all(full, "train")[0]
  rows = lambda x: {r.tobytes() for r in x}  # noqa: E731
  assert not rows(train) & rows(val) and rows(train) | rows(val) == rows(full)
  np.testing.assert_array_equal(val, _all(other_seed, "validation")[0])
  assert set(ds.train_indices(0, 350)) == set(range(350))
  with pytest.raises(ValueError, match="config.data.validation_size"):
    create_dataset({"name": "digits", "validation_size": 1438}, seed=0)


def test_augmentation_is_deterministic_crop_and_flip():
  images = np.random.default_rng(0).integers(1, 256, (6, 5, 5, 2), dtype=np.uint8)
  out = crop_and_flip(images, np.random.default_rng(1), pad=2)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  for o, p in zip(out, padded):
    crops = [p[i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
    assert any(np.array_equal(o, c) or np.array_equal(o, c[:, ::-1]) for c in crops)
  source = ArraySource(images, np.zeros(6))
  make = lambda: Dataset("aug", {"train": source}, 2, seed=0, augment=True)  # noqa: E731
  np.testing.assert_array_equal(make().train_batch(3, 4)["image"], make().train_batch(3, 4)["image"])
  with pytest.raises(ValueError, match="config.data.augment"):
    create_dataset({"name": "mnist1d", "augment": True}, seed=0)


# config errors -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config, match", [
    ({"name": "mnist1d", "batch": 3}, "config.data.batch: unknown field .* accepted fields are .*num_samples"),
    ({"name": "mnist1d", "source": "web"}, "config.data.source: got 'web'"),
    ({"name": "digits", "num_samples": 10}, "config.data.num_samples: unknown field"),
    ({"name": "mnist1d", "train_split": 1.5}, "config.data.train_split"),
    ({"name": "mnist1d", "validation_size": -1}, "config.data.validation_size"),
    ({"name": "cifar_10"}, "config.data.name: 'cifar_10' is not a built-in.*'cifar10'"),
])
def test_config_errors(config, match):
  with pytest.raises(ValueError, match=match):
    create_dataset(ml_collections.ConfigDict(config), seed=0)


# TFDS ----------------------------------------------------------------------------------------------------------------

def test_tfds_mock_cifar10():
  with tfds.testing.mock_data(num_examples=12):
    ds = create_dataset({"name": "cifar10"}, seed=0)  # not built in, so "auto" goes to TFDS
    lazy = create_dataset({"name": "cifar10", "in_memory": False, "validation_size": 2, "augment": True}, seed=0)
  assert (ds.num_train, ds.input_shape, ds.num_classes) == (12, (32, 32, 3), 10)
  assert ds.normalizer == Normalizer(1 / 255, *tfds_source.KNOWN_STATS["cifar10"])
  assert isinstance(ds._source("train"), ArraySource)
  assert isinstance(lazy._source("train"), SubsetSource) and isinstance(lazy._source("test"), tfds_source.TfdsSource)
  batch = lazy.train_batch(1, 8)
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
  assert ((batch["label"] >= 0) & (batch["label"] < 10)).all()
  np.testing.assert_array_equal(_all(ds, "test")[0], _all(lazy, "test")[0])  # lazy reads = in-memory arrays


def test_tfds_mock_stats_from_train_sample():
  with tfds.testing.mock_data(num_examples=20):
    ds = create_dataset({"name": "fashion_mnist", "source": "tfds"}, seed=0)
  assert ds.input_shape == (28, 28, 1) and len(ds.normalizer.mean) == 1
  x = _all(ds, "train")[0]
  assert abs(x.mean()) < 1e-4 and abs(x.std() - 1) < 1e-4


class SparsejaxTiny(tfds.core.GeneratorBasedBuilder):
  """8x8x3 uint8 images as a Tensor feature, so that building needs no TensorFlow (Image encoding does)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=4)}))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

  def _generate_examples(self, split):
    for i, (image, label) in enumerate(zip(*_tiny_arrays(split))):
      yield i, {"image": image, "label": label}


def _tiny_arrays(split):
  n = {"train": 20, "test": 6}[split]
  return np.random.default_rng(n).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % 4


def test_tfds_real_array_record(tmp_path):
  SparsejaxTiny(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  config = {"name": "sparsejax_tiny", "source": "tfds", "data_dir": str(tmp_path), "normalize": False}
  for in_memory in (True, False):
    ds = create_dataset(dict(config, in_memory=in_memory), seed=0)
    assert (ds.num_train, ds.input_shape, ds.num_classes) == (20, (8, 8, 3), 4)
    for split in ("train", "test"):
      x, y = _all(ds, split)
      images, labels = _tiny_arrays(split)  # TFDS shuffles records when writing: compare as sets
      key = lambda xs, ys: sorted(zip([v.tobytes() for v in xs], ys.tolist()))  # noqa: E731
      assert key(x, y) == key(images.astype(np.float32) * np.float32(1 / 255), labels)


def test_tfds_not_prepared_message(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    create_dataset({"name": "sparsejax_tiny", "source": "tfds", "data_dir": str(tmp_path)}, seed=0)
  message = str(e.value)
  assert "tfds build sparsejax_tiny --file_format=array_record" in message and str(tmp_path) in message
  assert "download_and_prepare" in message
