"""The lottery-ticket configs run end to end through `train_and_evaluate`, with tiny overrides.

Each config keeps its model, data, optimizer, pruning rates, distribution, rewinding and control; only the lengths
shrink (a few steps, 2 levels, small batches). The CIFAR-10 configs read TFDS mock data. The level sparsities are
checked against the exact counts of the IMP chain, computed here from the kernel shapes: per layer
n <- round((1 - p_layer) * n), or globally N <- round((1 - p) * N).
"""
import importlib
import json
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import sparsejax as sj
from sparsejax import config_validation, train
from sparsejax.models import create_model

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
LTH_CONFIGS = ["mnist1d_mlp_lth", "fashion_mnist_lenet300_lth", "cifar10_conv2_lth", "cifar10_resnet20_lth"]
INPUT_SHAPES = {"mnist1d_mlp": (40,), "lenet300": (28, 28, 1), "conv2": (32, 32, 3), "resnet20": (32, 32, 3)}


@pytest.fixture(autouse=True)
def _tfds_temp_dirs_in_tmp_path(tmp_path, monkeypatch):
  # tfds 4.9.10 leaves an empty mkdtemp() folder behind for an unprepared dataset (see tests/test_data.py).
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _get_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def _tiny(name, steps=4, levels=2, batch_size=4, **sparsity):
  config = _get_config(name)
  training = config.training
  training.num_steps = steps
  training.batch_size = batch_size
  training.eval_batch_size = 500 if name in ("mnist1d_mlp_lth", "fashion_mnist_lenet300_lth") else 8
  training.eval_every = 0        # only at the end of each run
  training.log_every = 1
  training.checkpoint_every = 0  # only at the end of each run
  training.progress = "none"
  config.sparsity.levels = levels
  for key, value in sparsity.items():
    config.sparsity[key] = value
  return config


def _kernel_sizes(config):
  """{param path: size} of the prunable kernels (every ndim >= 2 param), from the model's shapes alone."""
  kwargs = {k: v for k, v in config.model.to_dict().items() if k != "name"}
  model = create_model(config.model.name, 10, **kwargs)
  x = jnp.zeros((1, *INPUT_SHAPES[config.model.name]))
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  return {path: int(np.prod(leaf.shape)) for path, leaf in sj.masks.flatten_with_paths(params) if leaf.ndim >= 2}


def _expected_nnz(config, sizes, levels):
  """Per level, {path: nnz} (layerwise) or the total nnz (global) of the IMP chain."""
  s = config.sparsity
  overrides = dict(s.get("prune_fraction_overrides") or {})
  if s.distribution == "global":
    totals = [sum(sizes.values())]
    for _ in range(levels):
      totals.append(round((1 - s.prune_fraction) * totals[-1]))
    return totals
  fraction = {p: next((v for rx, v in overrides.items() if re.search(rx, p)), s.prune_fraction) for p in sizes}
  chain = [dict(sizes)]
  for _ in range(levels):
    chain.append({p: round((1 - fraction[p]) * n) for p, n in chain[-1].items()})
  return chain


def _run(config, workdir, mock_examples=None):
  workdir = os.path.join(workdir, "run")  # tmp_path also holds tfds's temporary folders
  if mock_examples:
    with tfds.testing.mock_data(num_examples=mock_examples):
      return train.train_and_evaluate(config, workdir)
  return train.train_and_evaluate(config, workdir)


def _check_levels(config, results, workdir, levels=2):
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk == json.loads(json.dumps(results))
  assert results["algorithm"] == "imp" and results["model"] == config.model.name
  assert [lv["level"] for lv in results["levels"]] == list(range(levels + 1))
  sizes = _kernel_sizes(config)
  total = sum(sizes.values())
  expected = _expected_nnz(config, sizes, levels)
  controls = {"none": set(), "both": {"random_mask", "random_reinit"}}.get(config.sparsity.control,
                                                                          {config.sparsity.control})
  for lv, want in zip(results["levels"], expected):
    if isinstance(want, dict):  # layerwise: every layer's count, then the total
      assert {p: d["nnz"] for p, d in lv["layers"].items()} == want, lv["level"]
      want = sum(want.values())
    assert lv["nnz"] == want, lv["level"]
    assert lv["sparsity"] == pytest.approx(1 - want / total, rel=1e-6, abs=1e-9)
    for acc in (lv["test_accuracy"], lv["best_test_accuracy"]):
      assert 0.0 <= acc <= 1.0
    assert set(lv["controls"]) == (controls if lv["level"] else set())
    for ctrl in lv["controls"].values():
      assert ctrl["sparsity"] == lv["sparsity"] and 0.0 <= ctrl["best_test_accuracy"] <= 1.0
  assert expected[-1] != expected[0]  # pruning happened
  assert results["final"]["sparsity"] == results["levels"][-1]["sparsity"]
  assert os.path.exists(os.path.join(workdir, "lottery.png"))


def _run_steps(workdir, level, run):
  with open(os.path.join(workdir, "levels", f"{level:02d}_{run}", "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


@pytest.mark.parametrize("name", LTH_CONFIGS)
def test_lth_config_validates_and_documents_its_command(name):
  config = _get_config(name)
  config_validation.validate(config)
  sj.create_pruner(config.sparsity)
  assert config.sparsity.algorithm == "imp" and config.sparsity.levels >= 8
  family = name[:-len("_lth")]  # the old name is an alias of the family's config by string, method=imp
  assert f"--config=configs/{family}.py:method=imp" in importlib.import_module(f"configs.{name}").__doc__
  doc = importlib.import_module(f"configs.{family}").__doc__
  assert "python -m experiments.train --config=configs/" in doc and "imp" in doc
  assert "Expected" in doc or "Measured" in doc or "Published" in doc


@pytest.mark.slow
def test_mnist1d_lth_runs(tmp_path):
  config = _tiny("mnist1d_mlp_lth", batch_size=20)
  results = _run(config, str(tmp_path))
  _check_levels(config, results, str(tmp_path / "run"))
  assert _run_steps(str(tmp_path / "run"), 1, "ticket") == [1, 2, 3, 4]  # rewind to init: a level trains from step 0


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason=f"{FASHION_DIR} absent (apt-get install "
                    "dataset-fashion-mnist)")
@pytest.mark.slow
def test_fashion_mnist_lenet300_lth_runs(tmp_path):
  config = _tiny("fashion_mnist_lenet300_lth", batch_size=60)
  results = _run(config, str(tmp_path))
  _check_levels(config, results, str(tmp_path / "run"))
  layers = results["levels"][2]["layers"]  # 20% of the hidden layers per level, 10% of the output layer
  assert layers["dense_1/kernel"]["nnz"] == round(0.8 * round(0.8 * 30000))
  assert layers["head/kernel"]["nnz"] == round(0.9 * round(0.9 * 1000))


@pytest.mark.slow
def test_cifar10_conv2_lth_runs_on_mock_data(tmp_path):
  config = _tiny("cifar10_conv2_lth")
  results = _run(config, str(tmp_path), mock_examples=16)
  _check_levels(config, results, str(tmp_path / "run"))
  assert results["dataset"] == "cifar10"
  layers = results["levels"][1]["layers"]  # conv 10%, dense 20%, output 10% per level
  assert layers["conv_1/kernel"]["nnz"] == round(0.9 * 3 * 3 * 64 * 64)
  assert layers["dense_0/kernel"]["nnz"] == round(0.8 * 16 * 16 * 64 * 256)
  assert layers["head/kernel"]["nnz"] == round(0.9 * 256 * 10)


@pytest.mark.slow  # compiling ResNet-20's train step on CPU dominates
def test_cifar10_resnet20_lth_rewinds_late_on_mock_data(tmp_path):
  steps, rewind = 6, 3
  config = _tiny("cifar10_resnet20_lth", steps=steps, rewind_step=rewind)
  shipped = _get_config("cifar10_resnet20_lth").sparsity
  assert (shipped.rewind, shipped.distribution, shipped.prune_fraction) == ("step", "global", 0.2)
  results = _run(config, str(tmp_path), mock_examples=16)
  _check_levels(config, results, str(tmp_path / "run"))
  workdir = str(tmp_path / "run")
  # level 0 trains from step 0 and saves the rewind point; every later run starts there and trains to the end
  assert _run_steps(workdir, 0, "ticket") == list(range(1, steps + 1))
  assert os.listdir(os.path.join(workdir, "levels", "rewind", "checkpoints")) == [str(rewind)]
  for level in (1, 2):
    for run in ("ticket", "random_reinit"):
      assert _run_steps(workdir, level, run) == list(range(rewind + 1, steps + 1)), (level, run)
      with open(os.path.join(workdir, "levels", f"{level:02d}_{run}", "result.json")) as f:
        assert json.load(f)["steps"] == steps - rewind
  assert results["final"]["step"] == steps
  # global pruning: the layers lose different fractions, the total exactly 20% per level
  fractions = {p: d["sparsity"] for p, d in results["levels"][1]["layers"].items()}
  assert max(fractions.values()) - min(fractions.values()) > 0.05
