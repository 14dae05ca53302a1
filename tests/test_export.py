"""sj.export: strip, the packed file (restored bit for bit), safetensors in PyTorch layout, BCOO/BCSR Dense layers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

import sparsejax as sj
from sparsejax import models
from sparsejax.export import packed

EPS32 = float(np.finfo(np.float32).eps)


def _magnitude(x, sparsity):
  """x with its smallest-magnitude `sparsity` fraction set to 0 (a numpy oneshot magnitude prune)."""
  k = int(round(sparsity * x.size))
  out = x.copy().reshape(-1)
  out[np.argsort(np.abs(out), kind="stable")[:k]] = 0
  return out.reshape(x.shape)


def _nm(x, n, m, axis):
  """x with all but the n largest-magnitude entries of every group of m along `axis` set to 0."""
  moved = np.moveaxis(x, axis, -1)
  groups = moved.reshape(-1, m).copy()
  drop = np.argsort(np.abs(groups), axis=1, kind="stable")[:, :m - n]
  np.put_along_axis(groups, drop, 0, axis=1)
  return np.moveaxis(groups.reshape(moved.shape), -1, axis)


def _tree(rng):
  """A LeNet-300-100-sized tree with leaves no pruner touches: biases, an embedding, an int counter, a bool flag."""
  return {
      "dense_0": {"kernel": rng.standard_normal((784, 300)).astype(np.float32), "bias": rng.standard_normal(300)
                  .astype(np.float32)},
      "dense_1": {"kernel": rng.standard_normal((300, 100)).astype(np.float32), "bias": np.zeros(100, np.float32)},
      "conv": {"kernel": rng.standard_normal((3, 3, 8, 16)).astype(np.float32)},
      "attn": {"query": {"kernel": rng.standard_normal((32, 4, 8)).astype(np.float32)}},
      "wte": {"embedding": rng.standard_normal((50, 16)).astype(np.float32)},
      "step": np.array(7, np.int32),
      "flag": np.array([True, False]),
      "half": {"kernel": rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)},
  }


def _prune(tree, fn):
  prunable = set(sj.masks.prunable_paths(tree))
  return jax.tree_util.tree_map_with_path(
      lambda kp, x: fn(sj.masks.path_str(kp), x) if sj.masks.path_str(kp) in prunable else x, tree)


def _assert_bit_equal(restored, original):
  flat_r = dict(sj.masks.flatten_with_paths(restored))
  flat_o = dict(sj.masks.flatten_with_paths(original))
  assert flat_r.keys() == flat_o.keys()
  for path, x in flat_o.items():
    y = flat_r[path]
    assert y.dtype == x.dtype and y.shape == x.shape, path
    assert np.array_equal(y, x, equal_nan=x.dtype.kind == "f"), path
    assert np.array_equal(y.reshape(-1).view(np.uint8), x.reshape(-1).view(np.uint8)), path  # bits: -0.0, NaN


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.98])
def test_unstructured_round_trip_is_bit_exact(tmp_path, sparsity):
  params = _prune(_tree(np.random.default_rng(0)), lambda _, x: _magnitude(x, sparsity))
  params["dense_0"]["kernel"][0, :3] = [-0.0, np.nan, np.inf]  # kept values with unusual bits
  header = sj.export.save(tmp_path / "p.npz", params, compress=False)
  _assert_bit_equal(sj.export.load(tmp_path / "p.npz"), params)
  sj.export.save(tmp_path / "deflated.npz", params)
  _assert_bit_equal(sj.export.load(tmp_path / "deflated.npz"), params)
  assert (tmp_path / "deflated.npz").stat().st_size < (tmp_path / "p.npz").stat().st_size
  encodings = {leaf["path"]: leaf["encoding"] for leaf in header["leaves"]}
  assert encodings["dense_0/kernel"] == "bitmask" and encodings["dense_0/bias"] == "dense"
  assert encodings["wte/embedding"] == encodings["step"] == encodings["flag"] == "dense"
  dense_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  # The kernels dominate: bitmask (1/32 of a float32) plus the kept values.
  assert (tmp_path / "p.npz").stat().st_size < dense_bytes * (1 - sparsity + 1 / 32 + 0.03)


def test_nm_round_trip_is_bit_exact_and_uses_the_input_axis(tmp_path):
  def two_four(path, x):
    return _nm(x, 2, 4, sj.granularity.input_axis("flax", path, x.shape))
  params = _prune(_tree(np.random.default_rng(1)), two_four)
  params["dense_1"]["kernel"][:4, 0] = 0  # a group with no nonzero: the encoding keeps two zeros
  header = sj.export.save(tmp_path / "p.npz", params, nm="2:4")
  _assert_bit_equal(sj.export.load(tmp_path / "p.npz"), params)
  by_path = {leaf["path"]: leaf for leaf in header["leaves"]}
  assert by_path["dense_0/kernel"]["encoding"] == "nm" and by_path["dense_0/kernel"]["axis"] == 0
  assert by_path["conv/kernel"]["axis"] == 2 and by_path["attn/query/kernel"]["axis"] == 0
  with np.load(tmp_path / "p.npz") as archive:
    i = header["leaves"].index(by_path["dense_0/kernel"])
    assert archive[f"{i}.values"].size == 784 * 300 // 2  # exactly n per group
    assert archive[f"{i}.index"].nbytes == 784 * 300 // 2 * 2 // 8  # 2 bits per kept value


def test_nm_falls_back_to_bitmask_where_a_group_holds_more_than_n():
  x = _nm(np.random.default_rng(2).standard_normal((8, 6)).astype(np.float32), 2, 4, 0)
  assert packed.encode_nm(x, 2, 4, 0) is not None
  assert packed.encode_nm(x, 2, 4, 1) is None  # along the other axis the groups are not 2:4
  entry, _ = packed.encode_leaf("w", x, True, (2, 4), "torch")  # torch layout: input axis 1
  assert entry["encoding"] == "bitmask"


@pytest.mark.parametrize("n,m", [(1, 4), (2, 8), (3, 16)])
def test_nm_other_patterns(n, m):
  x = _nm(np.random.default_rng(3).standard_normal((4, m * 3)).astype(np.float32), n, m, 1)
  arrays = packed.encode_nm(x, n, m, 1)
  np.testing.assert_array_equal(packed.decode_nm(arrays, x.shape, x.dtype, n, m, 1), x)


def test_masks_strip_first_and_choose_the_sparse_leaves(tmp_path):
  rng = np.random.default_rng(4)
  params = {"a": {"kernel": rng.standard_normal((64, 32)).astype(np.float32), "bias": np.ones(32, np.float32)}}
  masks = {"a": {"kernel": rng.random((64, 32)) < 0.1, "bias": None}}
  stripped = sj.export.strip(params, masks)
  np.testing.assert_array_equal(stripped["a"]["kernel"], np.where(masks["a"]["kernel"], params["a"]["kernel"], 0))
  assert not np.signbit(np.asarray(stripped["a"]["kernel"])[~masks["a"]["kernel"]]).any()  # +0.0, not -0.0
  header = sj.export.save(tmp_path / "p.npz", params, masks)
  _assert_bit_equal(sj.export.load(tmp_path / "p.npz"), jax.tree.map(np.asarray, stripped))
  assert [leaf["encoding"] for leaf in header["leaves"]] == ["dense", "bitmask"]
  assert header["format"] == "sparsejax.packed" and header["sparsejax_version"] == sj.__version__


def test_load_into_a_like_tree_and_errors(tmp_path):
  from flax.core import FrozenDict
  params = FrozenDict({"d": {"kernel": np.zeros((4, 4), np.float32)}})
  sj.export.save(tmp_path / "p.npz", params)
  restored = sj.export.load(tmp_path / "p.npz", like=params)
  assert isinstance(restored, FrozenDict)
  with pytest.raises(ValueError, match="the file holds"):
    sj.export.load(tmp_path / "p.npz", like={"other": np.zeros(1)})
  np.savez(tmp_path / "plain.npz", x=np.zeros(3))
  with pytest.raises(ValueError, match="not a sparsejax.packed archive"):
    sj.export.load(tmp_path / "plain.npz")
  with pytest.raises(ValueError, match="nm: got"):
    sj.export.save(tmp_path / "q.npz", params, nm="4:2")


def test_strip_unwraps_nnx_variables():
  from flax import nnx
  model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  masks = sj.create_masks(state)
  out = sj.export.strip(state, masks)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(out))


def _abs_forward_bound(x, layers):
  """First-order bound on |float32 result - exact| of relu(x W + b) layers (last without relu), for ANY order of
  summation: each output is a dot product of length K plus a bias, whose float rounding error is at most
  gamma_{K+1} = (K+1) eps/(1-(K+1) eps) times the same sum of absolute values (Higham, Accuracy and Stability,
  3.1); relu is 1-Lipschitz, so an input error e reaches the next layer as at most |W| e."""
  exact, err = x.astype(np.float64), np.zeros_like(x, np.float64)
  for i, (w, b) in enumerate(layers):
    w, b = w.astype(np.float64), b.astype(np.float64)
    k = w.shape[0] + 1
    gamma = k * EPS32 / (1 - k * EPS32)
    err = err @ np.abs(w) + gamma * (np.abs(exact) @ np.abs(w) + np.abs(b))
    exact = exact @ w + b
    if i < len(layers) - 1:
      exact = np.maximum(exact, 0)
  return exact, err


def _random_like(shapes, seed):
  """Numpy params of these shapes (building them with model.init costs seconds of compiling on a busy CPU)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(s.dtype), shapes)


def test_safetensors_mlp_loads_in_torch_layout_and_gives_the_flax_logits(tmp_path):
  model = models.create_model("lenet300", num_classes=10)
  x = np.random.default_rng(1).standard_normal((16, 28, 28, 1)).astype(np.float32)
  params = _random_like(jax.eval_shape(model.init, jax.random.key(0), x)["params"], seed=0)
  masks = jax.tree.map(lambda p: np.abs(p) >= np.quantile(np.abs(p), 0.9) if p.ndim == 2 else None, params)
  params = jax.tree.map(np.asarray, sj.export.strip(params, masks))
  sj.export.to_safetensors(params, tmp_path / "m.safetensors")
  loaded = load_file(tmp_path / "m.safetensors")
  layers = ("dense_0", "dense_1", "head")
  assert sorted(loaded) == sorted(f"{layer}.{p}" for layer in layers for p in ("weight", "bias"))
  for layer in ("dense_0", "dense_1", "head"):
    np.testing.assert_array_equal(loaded[f"{layer}.weight"], np.asarray(params[layer]["kernel"]).T)
    np.testing.assert_array_equal(loaded[f"{layer}.bias"], np.asarray(params[layer]["bias"]))
    assert loaded[f"{layer}.weight"].dtype == np.float32
  assert (loaded["dense_0.weight"] == 0).mean() == pytest.approx(0.9, abs=1e-3)
  # A torch-style forward in numpy float32: h = relu(h @ W.T + b).
  h = np.asarray(x).reshape(16, -1)
  for layer in ("dense_0", "dense_1", "head"):
    h = h @ loaded[f"{layer}.weight"].T + loaded[f"{layer}.bias"]
    h = np.maximum(h, 0) if layer != "head" else h
  logits = np.asarray(model.apply({"params": params}, x))
  exact, bound = _abs_forward_bound(np.asarray(x).reshape(16, -1), [
      (loaded[f"{layer}.weight"].T, loaded[f"{layer}.bias"]) for layer in ("dense_0", "dense_1", "head")])
  # Both float32 forwards lie within `bound` of the exact (float64) one, so within 2 * bound of each other; the
  # bound is ~1e-4 relative here, the measured gap is float32 rounding (~1e-6).
  assert np.all(np.abs(logits - exact) <= bound) and np.all(np.abs(h - exact) <= bound)
  assert np.all(np.abs(logits - h) <= 2 * bound)


class _ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (3, 3), padding="VALID", name="conv_0")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn_0")(x)
    x = nn.relu(x).mean(axis=(1, 2))  # global average pool: no NHWC-vs-NCHW flatten order for the head
    return nn.Dense(3, name="head")(x)


def test_safetensors_conv_batchnorm_names_and_layouts(tmp_path):
  model = _ConvNet()
  x = np.random.default_rng(1).standard_normal((2, 6, 6, 4)).astype(np.float32)
  variables = _random_like(jax.eval_shape(model.init, jax.random.key(0), x), seed=2)
  params = variables["params"]
  stats = {"bn_0": {"mean": variables["batch_stats"]["bn_0"]["mean"],
                    "var": 1 + np.abs(variables["batch_stats"]["bn_0"]["var"])}}
  sj.export.to_safetensors(params, tmp_path / "c.safetensors", batch_stats=stats)
  loaded = load_file(tmp_path / "c.safetensors")
  expected = {
      "conv_0.weight": np.transpose(params["conv_0"]["kernel"], (3, 2, 0, 1)), "conv_0.bias": params["conv_0"]["bias"],
      "bn_0.weight": params["bn_0"]["scale"], "bn_0.bias": params["bn_0"]["bias"],
      "bn_0.running_mean": stats["bn_0"]["mean"], "bn_0.running_var": stats["bn_0"]["var"],
      "head.weight": params["head"]["kernel"].T, "head.bias": params["head"]["bias"]}
  assert sorted(loaded) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(loaded[name], np.asarray(value), err_msg=name)
  assert loaded["conv_0.weight"].shape == (8, 4, 3, 3)
  # The torch-layout conv in numpy (NCHW, cross-correlation as torch.nn.Conv2d) equals Flax's conv.
  xn = np.transpose(np.asarray(x), (0, 3, 1, 2)).astype(np.float64)
  w = loaded["conv_0.weight"].astype(np.float64)
  conv = np.zeros((2, 8, 4, 4))
  for i in range(3):
    for j in range(3):
      conv += np.einsum("nchw,oc->nohw", xn[:, :, i:i + 4, j:j + 4], w[:, :, i, j])
  conv += loaded["conv_0.bias"][None, :, None, None]
  # BatchNorm in eval mode as torch computes it from the loaded buffers (both use eps 1e-5), pool, head.
  inv = loaded["bn_0.weight"] / np.sqrt(loaded["bn_0.running_var"] + 1e-5)
  h = (conv - loaded["bn_0.running_mean"][None, :, None, None]) * inv[None, :, None, None]
  h = np.maximum(h + loaded["bn_0.bias"][None, :, None, None], 0).mean(axis=(2, 3))
  logits = h @ loaded["head.weight"].T + loaded["head.bias"]
  flax_logits = np.asarray(model.apply({"params": params, "batch_stats": stats}, x))
  # float32 against float64: 37-term conv sums and 9-term head sums of values of order 1, with BN's 1/sqrt(var) <= 1
  # (var >= 1 here): rounding stays below 1e2 eps ~ 1e-5 absolute; 1e-4 leaves room without hiding a wrong layout
  # (a transposed kernel or swapped mean/var moves the logits by order 1).
  np.testing.assert_allclose(flax_logits, logits, rtol=0, atol=1e-4)


def test_safetensors_refuses_attention_and_bfloat16(tmp_path):
  with pytest.raises(ValueError, match="attention kernel"):
    sj.export.to_safetensors({"attn": {"query": {"kernel": np.zeros((8, 2, 4), np.float32)}}}, tmp_path / "a")
  with pytest.raises(ValueError, match="cannot write dtype"):
    sj.export.to_safetensors({"d": {"kernel": np.zeros((4, 2), ml_dtypes.bfloat16)}}, tmp_path / "b")
  flat = sj.export.to_safetensors({"attn": {"query": {"kernel": np.zeros((8, 2, 4), np.float32)}}}, tmp_path / "c",
                                  layout="flax")
  assert flat["attn.query.kernel"].shape == (8, 2, 4)


@pytest.mark.parametrize("fmt", ["bcoo", "bcsr"])
@pytest.mark.parametrize("sparsity", [0.9, 0.99])
def test_sparse_dense_equals_the_masked_matmul(fmt, sparsity):
  rng = np.random.default_rng(5)
  kernel = _magnitude(rng.standard_normal((96, 40)).astype(np.float32), sparsity)
  bias = rng.standard_normal(40).astype(np.float32)
  layer = sj.export.sparse_dense(kernel, bias, format=fmt)
  assert layer.weight.nse == np.count_nonzero(kernel) and layer.weight.shape == (40, 96)
  for shape in [(1, 96), (7, 96), (2, 3, 96)]:
    x = rng.standard_normal(shape).astype(np.float32)
    y = np.asarray(jax.jit(lambda layer, x: layer(x))(layer, x))
    ref = x.astype(np.float64) @ kernel + bias
    bound = 97 * EPS32 * (np.abs(x) @ np.abs(kernel) + np.abs(bias))  # gamma_{K+1} * sum of |terms|
    assert y.shape == shape[:-1] + (40,) and y.dtype == np.float32
    assert np.all(np.abs(y - ref) <= bound)


def test_sparse_dense_errors():
  with pytest.raises(ValueError, match="format"):
    sj.export.sparse_dense(jnp.zeros((2, 2)), format="csr")
  with pytest.raises(ValueError, match="2 axes"):
    sj.export.sparse_dense(jnp.zeros((2, 2, 2)))


def test_readme_export_example_runs(tmp_path, monkeypatch):
  import os
  import re
  readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
  code = re.search(r"```python\n(.*?)```", readme[readme.index("## Export"):], re.S).group(1)
  monkeypatch.chdir(tmp_path)  # it writes model.npz and model.safetensors
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  _assert_bit_equal(namespace["restored"], jax.tree.map(np.asarray, namespace["plain"]))
  assert load_file("model.safetensors")["dense_0.weight"].shape == (300, 784)
  kernel = np.asarray(namespace["plain"]["dense_0"]["kernel"])
  np.testing.assert_allclose(namespace["logits"], np.ones((64, 784), np.float32) @ kernel, rtol=1e-5, atol=1e-4)
  assert 0.89 < (kernel == 0).mean() < 0.91
