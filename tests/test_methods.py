"""Every pruning method end to end through the train loop and the launcher; the per-method configs; compare_methods."""
import importlib
import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import sparsejax as sj
from sparsejax import config_validation, report, steps, train
from tiny_dataset import TinyDataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from configs import methods as methods_lib  # noqa: E402
from experiments import compare_methods  # noqa: E402

METHODS = methods_lib.METHODS
FAMILIES = ("mnist1d_mlp", "fashion_mnist_lenet300")
AT_INIT = ("snip", "grasp", "synflow", "random")


@pytest.fixture
def tiny_data(monkeypatch):
  """`train.build` gets a TinyDataset of 40 features (the input of mlp and mnist1d_mlp)."""
  monkeypatch.setattr(train, "create_dataset", lambda data_config, seed: TinyDataset(seed=seed, num_train=128))


@pytest.fixture
def final_state(monkeypatch):
  """Records the params and masks that `train.final_results` evaluates (the state results.json describes)."""
  seen = {}
  original = train.final_results

  def spy(setup, eval_fn, state, wall_seconds, levels=()):
    seen["params"] = jax.device_get(state.params)
    seen["masks"] = jax.device_get(sj.get_masks(state.opt_state))
    return original(setup, eval_fn, state, wall_seconds, levels)

  monkeypatch.setattr(train, "final_results", spy)
  return seen


def method_config(method, steps_=8, target=0.5):
  """tiny_config (mlp, momentum, batch 8) with the sparsity section of configs/methods.py, updates every 2 steps."""
  config = ml_collections.ConfigDict(tiny_config(steps=steps_))
  config.sparsity = ml_collections.ConfigDict({"algorithm": "dense"})
  methods_lib.set_method(config, method, target)
  config.sparsity.update_every = 2
  return config


# gmp, rigl and the dense baseline in make test; the other methods' end-to-end runs in make test-slow (their pruners
# are covered in make test by test_optax_matrix, test_properties, test_dst and test_pai).
@pytest.mark.parametrize("method", [m if m in ("dense", "gmp", "rigl") else pytest.param(m, marks=pytest.mark.slow)
                                    for m in METHODS])
def test_method_trains_end_to_end_to_its_target(method, tiny_data, final_state, tmp_path):
  target = 0.5
  results = train.train_and_evaluate(method_config(method, 8, target), str(tmp_path))
  assert results["algorithm"] == method and results["final"]["step"] == 8
  assert json.load(open(tmp_path / "results.json")) == json.loads(json.dumps(results))
  assert np.isfinite(results["final"]["test_loss"]) and 0.0 <= results["final"]["test_accuracy"] <= 1.0
  params = dict(sj.masks.flatten_with_paths(final_state["params"]))
  masks = [(p, np.asarray(m)) for p, m in sj.masks.flatten_with_paths(final_state["masks"], is_leaf=sj.masks.is_none)
           if m is not None]
  assert [p for p, _ in masks] == list(results["layers"])  # every kernel, no bias
  total = sum(m.size for _, m in masks)
  for path, mask in masks:
    w = np.asarray(params[path])
    assert mask.dtype == bool and mask.shape == w.shape
    assert np.all(w[~mask] == 0.0), f"{method}: pruned weights of {path} are not exactly zero"
    assert results["layers"][path]["nnz"] == np.count_nonzero(w)
  kept = sum(int(m.sum()) for _, m in masks)
  # The masks hold the target up to per-layer rounding (ERK of set / rigl rounds each of the 3 layers).
  assert abs((1 - kept / total) - target) <= len(masks) / total
  # results.json counts the weight arrays: exactly what the final params hold.
  nonzero = sum(np.count_nonzero(np.asarray(params[p])) for p, _ in masks)
  assert results["final"]["nnz"] == nonzero and results["final"]["prunable_params"] == total
  assert results["final"]["sparsity"] == pytest.approx(1 - nonzero / total, abs=1e-12)
  assert results["final"]["sparsity"] == pytest.approx(target, abs=0.005)
  first = report.read_metrics(str(tmp_path))[0]  # after 2 steps
  if method in AT_INIT + ("set", "rigl"):  # sparse from the first step (SET's random growth may add zeros: a weight
    assert first["sparsity"] >= target - 0.005  # grown at step 0 moves at step 1 only where its gradient is not 0)
  else:  # granet, movement: dense to sparse
    assert first["sparsity"] < 0.1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
def test_method_configs_validate_and_document_their_command(family, method):
  name = f"{family}_{method}"
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  config_validation.validate(config)
  pruner = sj.create_pruner(config.sparsity)
  assert pruner.config["algorithm"] == method and pruner.config["target"] == 0.9
  # The old name is an alias of the family's config by string, whose docstring lists the method and its numbers.
  assert f"--config=configs/{family}.py:method={method}" in module.__doc__ and f"--workdir=runs/{name}" in module.__doc__
  doc = importlib.import_module(f"configs.{family}").__doc__
  assert f"--config=configs/{family}.py:method=METHOD" in doc and re.search(rf"\n  {method} +0\.\d+ ", doc)
  assert "Expected at the defaults (measured" in doc
  # Steps follow training.num_steps: a shorter run keeps the proportions.
  config.training.num_steps = 1000
  if method in ("set", "rigl", "granet", "movement"):
    assert config.sparsity.end_step == 750


def test_unknown_method_is_refused():
  config = ml_collections.ConfigDict(tiny_config())
  with pytest.raises(ValueError, match="unknown method 'lth'"):
    methods_lib.set_method(config, "lth")


@pytest.mark.slow
def test_method_config_through_the_launcher(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mnist1d_mlp_rigl.py", f"--workdir={workdir}",
         "--config.training.num_steps=40", "--config.training.eval_every=20", "--config.training.log_every=20",
         "--config.sparsity.update_every=10", "--config.training.progress=none"]
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  assert results["algorithm"] == "rigl" and results["dataset"] == "mnist1d" and results["final"]["step"] == 40
  assert results["final"]["sparsity"] == pytest.approx(0.9, abs=0.005)
  config = json.load(open(workdir / "config.json"))
  assert config["sparsity"]["end_step"] == 30 and config["sparsity"]["init_distribution"] == "erk"
  # ERK keeps a larger share of the small layers than of the first one.
  layers = results["layers"]
  assert layers["head/kernel"]["sparsity"] < layers["dense_0/kernel"]["sparsity"]


@pytest.mark.slow  # several short runs and a resume: a minute on 2 cores
def test_compare_methods_writes_table_plot_and_resumes(tiny_data, tmp_path):
  kwargs = dict(seeds=[0, 1], num_steps=4, family="mnist1d_mlp", methods=("random",), sparsities=(0.9,),
                compile_cache=False)
  summary = compare_methods.compare_methods(str(tmp_path), **kwargs)
  assert sorted(os.listdir(tmp_path)) == ["compare.png", "dense_seed0", "dense_seed1", "random_s0.9_seed0",
                                          "random_s0.9_seed1", "report.md", "summary.json"]
  text = open(tmp_path / "report.md").read()
  assert "\n| dense | 0 |" in text and "\n| random | 0.9 |" in text
  runs = summary["runs"]
  for seed in (0, 1):  # per-seed accuracies are the runs' own
    assert f" {100 * runs[('random', 0.9, seed)]['final']['test_accuracy']:.2f} |" in text
  assert "GraNet" not in text  # claims about methods that did not run are left out
  saved = json.load(open(tmp_path / "summary.json"))
  assert len(saved["runs"]) == 4 and all(r["step"] == 4 for r in saved["runs"])
  assert [r["sparsity"] == pytest.approx(0.9, abs=0.01) for r in saved["runs"] if r["method"] == "random"] == [True] * 2
  # Seeds differ: init, data order and the random mask.
  assert runs[("random", 0.9, 0)]["final"]["test_loss"] != runs[("random", 0.9, 1)]["final"]["test_loss"]
  # Run again: every run is read back, nothing is trained or compiled.
  traces = dict(steps.TRACES)
  again = compare_methods.compare_methods(str(tmp_path), **kwargs)
  assert dict(steps.TRACES) == traces
  assert again["runs"][("random", 0.9, 1)] == json.loads(json.dumps(runs[("random", 0.9, 1)]))


def _fake_run(acc, head_nnz=10):
  return {"final": {"test_accuracy": acc, "sparsity": 0.9, "step": 1}, "wall_seconds": 1.0,
          "layers": {"dense_0/kernel": {"shape": [10, 10], "sparsity": 0.9, "nnz": 10},
                     "head/kernel": {"shape": [10, 10], "sparsity": 1 - head_nnz / 100, "nnz": head_nnz}}}


def test_compare_methods_claims_are_judged_per_seed():
  accs = {"dense": (0.90, 0.91), "granet": (0.85, 0.86), "gmp": (0.80, 0.87), "snip": (0.70, 0.71),
          "random": (0.75, 0.72), "synflow": (0.80, 0.81)}
  runs = {(m, 0.0 if m == "dense" else 0.9, s): _fake_run(a[s], head_nnz=0 if m == "snip" else 10)
          for m, a in accs.items() for s in (0, 1)}
  summary = {"family": "mnist1d_mlp", "num_steps": 1, "seeds": [0, 1], "sparsities": [0.9], "runs": runs,
             "methods": [m for m in accs if m != "dense"]}
  text = compare_methods.claims(summary)
  lines = {line.split(":")[0]: line for line in text.splitlines()}
  assert lines["- GraNet (Liu et al. 2021)"].endswith("**mixed (seeds disagree)**")  # +5, -1 points
  assert "granet - gmp = +2.00 points (per seed +5.00, -1.00)" in text
  assert lines["- SNIP (Lee et al. 2019) beats random pruning at init at 0.9"].endswith("**CONTRADICTED**")
  assert lines["- SynFlow (Tanaka et al. 2020) beats random pruning at init at 0.9"].endswith("**holds**")
  assert "RigL" not in text and "gmp_global" not in text  # not run
  assert "- layer collapse: snip at 0.9 emptied head/kernel" in text
  table = compare_methods.table(summary)
  assert "| snip | 0.9 | 70.50 | 70.00 | 71.00 | 0.9000 | 10.0 / 0.0 | 1 |" in table
  assert "density % (dense_0 / head)" in table
