"""Tests for sparsejax.models: every registered model runs jitted in both modes, param counts match the papers.

Expected param counts are computed here from the published architectures (or quoted from the papers and torchvision),
never read off the code under test. Shapes and counts come from `jax.eval_shape`, which traces `init` without compiling
it; every model then runs its train and eval modes in one jitted apply.
"""
import doctest
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import models
from sparsejax.models import common, conv, mlp, resnet, transformer

NUM_CLASSES = 7  # Not 10, so a hard-coded class count would show.
BN_MODELS = {"vgg16", "resnet20", "resnet18", "resnet50", "wrn22_2"}
MLP_INPUT = (2, 28, 28, 1)
INPUT_SHAPES = {"mlp": MLP_INPUT, "lenet300": MLP_INPUT, "lenet5": MLP_INPUT, "mnist1d_mlp": (2, 40)}
IMAGE_INPUT = (2, 32, 32, 3)
# Cheaper XLA CPU compilation: compile time, not run time, dominates these tiny batches.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _input(name, shape=None):
  shape = shape or INPUT_SHAPES.get(name, IMAGE_INPUT)
  return jax.random.normal(jax.random.key(1), shape, jnp.float32)


def _jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _param_shapes(name, num_classes=10, input_shape=None, **kwargs):
  model = models.create_model(name, num_classes, **kwargs)
  return jax.eval_shape(model.init, jax.random.key(0), _input(name, input_shape))["params"]


# Jitted `init` of these costs 5-10 s of XLA compilation each (one threefry kernel per layer) on a 2-core CI
# machine, so their test runs on variables shaped by tracing `init` and filled by numpy; their layers are built by the
# same `common` helpers whose initializers the other models and the initializer tests exercise.
STAND_IN_INIT = {"vgg16", "resnet18", "resnet50"}


def _stand_in_variables(model, x):
  """Variables of the traced shapes and dtypes: He-normal kernels, unit scales and variances, zero biases and means."""
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
    return np.full(leaf.shape, 1.0 if path[-1].key in ("scale", "var") else 0.0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, jax.random.key(0), x))


@functools.lru_cache(maxsize=None)
def _init(name):
  model = models.create_model(name, NUM_CLASSES)
  if name in STAND_IN_INIT:
    return model, _stand_in_variables(model, _input(name))
  return model, _jit(model.init)(jax.random.key(0), _input(name))


# Param counts of the published layers: conv kernels k*k*cin*cout (+ bias), BatchNorm scale and offset.
def _conv(k, cin, cout, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _dense(cin, cout):
  return cin * cout + cout


def _bn(c):
  return 2 * c


# The transformers (token inputs, (N, T, V) logits, 2-D embeddings and biases): tests/test_transformers.py.
CLASSIFIERS = sorted(set(models.MODELS) - {"vit", "gpt"})


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_init_and_apply_in_both_modes(name):
  model, variables = _init(name)
  assert ("batch_stats" in variables) == (name in BN_MODELS)
  flat = flax.traverse_util.flatten_dict(variables["params"], sep="/")
  for path, leaf in flat.items():
    assert leaf.dtype == jnp.float32, path
    assert leaf.ndim >= 2 if path.endswith("kernel") else leaf.ndim == 1, (path, leaf.shape)
    assert np.isfinite(leaf).all(), path
  assert flat["head/kernel"].shape[-1] == NUM_CLASSES

  x = _input(name)

  def both_modes(variables, x):  # One compilation for the two graphs.
    if name in BN_MODELS:  # As the train loop does: running statistics are state only where BatchNorm is.
      train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    else:
      train_logits, updates = model.apply(variables, x, train=True), {}
    return train_logits, updates, model.apply(variables, x, train=False)

  train_logits, updates, eval_logits = _jit(both_modes)(variables, x)
  if name in BN_MODELS:
    old, new = jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(updates["batch_stats"])
    assert len(old) == len(new) and all(a.shape == b.shape for a, b in zip(old, new))
    assert all(not np.allclose(a, b) for a, b in zip(old, new)), "train mode must update every running statistic"
    assert not np.allclose(train_logits, eval_logits)  # Batch statistics in training, running averages in evaluation.
  for logits in (train_logits, eval_logits):
    assert logits.shape == (x.shape[0], NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.isfinite(logits).all()
  if name not in BN_MODELS:  # No BatchNorm and no dropout: both modes compute the same function.
    np.testing.assert_allclose(train_logits, eval_logits, rtol=1e-6)


def test_lenet300_param_count():
  expected = _dense(784, 300) + _dense(300, 100) + _dense(100, 10)
  assert expected == 266_610  # Frankle & Carbin (2019), Figure 2.
  assert _num_params(_param_shapes("lenet300")) == expected


def test_mnist1d_mlp_param_count():
  expected = _dense(40, 500) + _dense(500, 500) + _dense(500, 10)
  assert expected == 276_010
  params = _param_shapes("mnist1d_mlp")
  assert _num_params(params) == expected
  assert sorted(params) == ["dense_0", "dense_1", "head"]


def test_lenet5_param_count():
  expected = _conv(5, 1, 6) + _conv(5, 6, 16) + _dense(16 * 5 * 5, 120) + _dense(120, 84) + _dense(84, 10)
  assert _num_params(_param_shapes("lenet5")) == expected == 61_706


# Frankle & Carbin (2019), Figure 2, "All/Conv Weights": Conv-2 4.3M/38K, Conv-4 2.4M/260K, Conv-6 1.7M/1.1M. The
# Conv-6 total does not follow from the layers the paper lists (the 4x4x256 -> 256 dense layer alone has 1.05M weights),
# so for Conv-6 only the conv weights are compared with the paper; the layers are what we build.
@pytest.mark.parametrize("name,convs,paper_total,paper_conv", [
    ("conv2", (64, 64), 4.3e6, 38e3),
    ("conv4", (64, 64, 128, 128), 2.4e6, 260e3),
    ("conv6", (64, 64, 128, 128, 256, 256), None, 1.1e6)])
def test_conv_net_param_counts(name, convs, paper_total, paper_conv):
  cins = (3,) + convs[:-1]
  side = 32 // 2 ** (len(convs) // 2)  # One 2x2 pool after every pair of convs.
  conv_weights = sum(_conv(3, cin, cout) for cin, cout in zip(cins, convs))
  expected = conv_weights + _dense(side * side * convs[-1], 256) + _dense(256, 256) + _dense(256, 10)
  assert conv_weights == pytest.approx(paper_conv, rel=0.05)
  if paper_total is not None:
    assert expected == pytest.approx(paper_total, rel=0.02)
  assert _num_params(_param_shapes(name)) == expected


def test_vgg16_param_count():
  widths = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
  cins = (3,) + widths[:-1]
  expected = sum(_conv(3, cin, cout, bias=False) + _bn(cout) for cin, cout in zip(cins, widths)) + _dense(512, 10)
  assert _num_params(_param_shapes("vgg16")) == expected


def _cifar_resnet20_count(shortcut):
  """He et al. (2016), section 4.2: 3x3 stem with 16 channels, 3 stages of 3 basic blocks with 16, 32, 64 channels."""
  total, cin = _conv(3, 3, 16, bias=False) + _bn(16), 16
  for width in (16, 32, 64):
    for _ in range(3):
      total += _conv(3, cin, width, bias=False) + _bn(width) + _conv(3, width, width, bias=False) + _bn(width)
      if cin != width and shortcut == "projection":
        total += _conv(1, cin, width, bias=False) + _bn(width)
      cin = width
  return total + _dense(64, 10)


@pytest.mark.parametrize("shortcut,expected", [("projection", 272_474), ("pad", 269_722)])
def test_resnet20_param_count(shortcut, expected):
  assert _cifar_resnet20_count(shortcut) == expected  # "0.27M" in He et al. (2016), Table 6.
  params = _param_shapes("resnet20", shortcut=shortcut)
  assert _num_params(params) == expected
  assert ("shortcut_conv" in params["stage1_block0"]) == (shortcut == "projection")


def test_wrn22_2_param_count():
  """Zagoruyko & Komodakis (2016): pre-activation blocks, 1x1 shortcut convs where the width changes."""
  expected, cin = _conv(3, 3, 16, bias=False), 16
  for width in (32, 64, 128):
    for _ in range(3):
      expected += _bn(cin) + _conv(3, cin, width, bias=False) + _bn(width) + _conv(3, width, width, bias=False)
      expected += _conv(1, cin, width, bias=False) if cin != width else 0
      cin = width
  expected += _bn(128) + _dense(128, 10)
  assert _num_params(_param_shapes("wrn22_2")) == expected


@pytest.mark.parametrize("name,expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_resnet_param_counts_match_torchvision(name, expected):
  assert _num_params(_param_shapes(name, num_classes=1000)) == expected
  small = _param_shapes(name, num_classes=1000, small_input=True)
  assert small["stem_conv"]["kernel"].shape == (3, 3, 3, 64)
  assert _num_params(small) == expected - _conv(7, 3, 64, bias=False) + _conv(3, 3, 64, bias=False)


class _BatchNorm(flax.linen.Module):

  @flax.linen.compact
  def __call__(self, x, train):
    return common.batch_norm(x, train, "bn", jnp.float32)


def test_batch_norm_uses_pytorch_momentum_and_epsilon():
  """Running mean = 0.9 * old + 0.1 * batch mean (PyTorch momentum 0.1); eval divides by sqrt(var + 1e-5)."""
  x = np.asarray(_input("mlp", (8, 3))) * 3.0 + 2.0
  layer = _BatchNorm()
  variables = layer.init(jax.random.key(0), x, train=False)
  _, updates = _jit(lambda v, x: layer.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["mean"], 0.1 * x.mean(axis=0), rtol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["bn"]["var"], 0.9 + 0.1 * x.var(axis=0), rtol=1e-5)
  np.testing.assert_allclose(_jit(lambda v, x: layer.apply(v, x, train=False))(variables, x),
                             x / np.sqrt(1.0 + 1e-5), rtol=1e-6)


def test_torch_init_bounds():
  """Conv kernels, whose fan-in includes the window, are checked in `test_torch_init_in_models_...`."""
  shape = (300, 20)
  fan_in = shape[0]
  bound = 1.0 / np.sqrt(fan_in)
  kernel = np.asarray(jax.jit(common.torch_kernel_init(), static_argnums=1)(jax.random.key(0), shape))
  bias = np.asarray(jax.jit(common.torch_bias_init(fan_in), static_argnums=1)(jax.random.key(1), (4000,)))
  for w in (kernel, bias):
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.9 * bound  # Fills the interval: uniform, not a narrower distribution.
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.1)


def test_torch_init_in_models_uses_each_layers_fan_in():
  """mnist1d_mlp defaults to the torch init, kernels and biases alike; conv fan-in includes the 3x3 window."""
  _, variables = _init("mnist1d_mlp")
  params = variables["params"]
  for layer, fan_in in (("dense_0", 40), ("dense_1", 500), ("head", 500)):
    for leaf in ("kernel", "bias"):
      w = np.asarray(params[layer][leaf])
      assert 0.8 / np.sqrt(fan_in) < np.abs(w).max() <= 1.0 / np.sqrt(fan_in), (layer, leaf)
  conv_params = _jit(conv.ConvNet(10, plan=(16,), dense_widths=(), kernel_init="torch").init)(
      jax.random.key(0), _input("conv2", (1, 4, 4, 3)))["params"]
  assert 0.8 / np.sqrt(27) < np.abs(conv_params["conv_0"]["kernel"]).max() <= 1.0 / np.sqrt(27)
  assert 0.8 / np.sqrt(27) < np.abs(conv_params["conv_0"]["bias"]).max() <= 1.0 / np.sqrt(27)


@pytest.mark.parametrize("kernel_init,gain", [("lecun", 1.0), ("he", 2.0)])
def test_normal_kernel_inits_have_the_published_variance(kernel_init, gain):
  model = models.create_model("mlp", 10, widths=(512,), kernel_init=kernel_init)
  params = _jit(model.init)(jax.random.key(0), _input("mlp", (1, 400)))["params"]
  np.testing.assert_allclose(np.asarray(params["dense_0"]["kernel"]).std(), np.sqrt(gain / 400), rtol=0.05)
  assert not np.asarray(params["dense_0"]["bias"]).any()


def test_mnist1d_mlp_matches_the_notebook_forward_pass():
  """h = relu(x W0 + b0); h = h + relu(h W1 + b1); logits = h W2 + b2 (Greydanus 2020)."""
  model, variables = _init("mnist1d_mlp")
  p = jax.tree.map(np.asarray, variables["params"])
  x = np.asarray(_input("mnist1d_mlp"))
  h = np.maximum(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"], 0.0)
  h = h + np.maximum(h @ p["dense_1"]["kernel"] + p["dense_1"]["bias"], 0.0)
  expected = h @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(_jit(model.apply)(variables, x), expected, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = _input("lenet5")
  model32, model16 = models.create_model("lenet5", 10), models.create_model("lenet5", 10, dtype="bfloat16")
  variables = _jit(model32.init)(jax.random.key(0), x)
  assert jax.tree.leaves(jax.eval_shape(model16.init, jax.random.key(0), x))[0].dtype == jnp.float32
  logits16 = _jit(model16.apply)(variables, x)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, _jit(model32.apply)(variables, x), rtol=0.1, atol=0.1)


def test_list_widths_from_a_config_are_accepted():
  model = models.create_model("mlp", 3, widths=[8, 4], residual=True)
  assert model.widths == (8, 4)
  assert {k: v["kernel"].shape for k, v in _param_shapes("mlp", 3, (2, 5), widths=[8, 4]).items()} == {
      "dense_0": (5, 8), "dense_1": (8, 4), "head": (4, 3)}


def test_unknown_model_name_lists_the_names():
  with pytest.raises(ValueError, match="model.name must be one of") as info:
    models.create_model("resnet21", 10)
  assert all(name in str(info.value) for name in models.MODELS)


def test_unknown_kwarg_names_the_kwarg_and_the_model():
  with pytest.raises(ValueError, match=r"'lenet300' got unknown option\(s\) \['widths'\]"):
    models.create_model("lenet300", 10, widths=(10,))
  with pytest.raises(ValueError, match="small_input"):
    models.create_model("resnet20", 10, small_input=False)


@pytest.mark.parametrize("name,kwargs,field", [
    ("mlp", {"kernel_init": "xavier"}, "kernel_init"),
    ("mlp", {"activation": "swish2"}, "activation"),
    ("mlp", {"widths": (32, 0)}, "widths"),
    ("mlp", {"widths": "300"}, "widths"),
    ("mlp", {"residual": "yes"}, "residual"),
    ("conv4", {"dtype": "int32"}, "dtype"),
    ("resnet20", {"shortcut": "conv"}, "shortcut"),
    ("resnet50", {"small_input": 1}, "small_input"),
    ("mnist1d_mlp", {"width": -5}, "width"),
])
def test_bad_option_values_name_the_field(name, kwargs, field):
  with pytest.raises(ValueError, match=field):
    models.create_model(name, 10, **kwargs)


def test_bad_num_classes_and_inputs():
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("conv2", 0)
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(models.create_model("conv2", 10).init, jax.random.key(0), jnp.zeros((2, 32, 32)))
  with pytest.raises(ValueError, match="depth"):
    jax.eval_shape(resnet.WideResNet(10, depth=20).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("module", [models, common, mlp, conv, resnet, transformer], ids=lambda m: m.__name__)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
