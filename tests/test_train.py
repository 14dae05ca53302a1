"""End-to-end tests of the train loop: results.json, compile-once, config errors before writes, workdir safety."""
import importlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import sparsejax as sj
from sparsejax import config_validation, optim, parallel, report, steps, train
from tiny_dataset import TinyDataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SHAPES = {"mlp": (40,), "lenet5": (28, 28, 1), "resnet20": (16, 16, 3)}


@pytest.fixture
def tiny_data(monkeypatch):
  """Makes `train.build` use a TinyDataset whose input shape suits config.model.name."""
  made = []

  def create(data_config, seed):
    del data_config  # the model decides the shape below
    made.append(TinyDataset(input_shape=tiny_data.shape, seed=seed))
    return made[-1]

  tiny_data.shape = (40,)
  monkeypatch.setattr(train, "create_dataset", create)
  return tiny_data


def _check_results(results, workdir, steps_, target):
  on_disk = json.load(open(os.path.join(workdir, "results.json")))
  assert on_disk == json.loads(json.dumps(results))
  assert {"algorithm", "dataset", "model", "wall_seconds", "final", "layers", "levels"} <= set(results)
  final = results["final"]
  assert final["step"] == steps_ and 0.0 <= final["test_accuracy"] <= 1.0 and np.isfinite(final["test_loss"])
  assert final["sparsity"] == pytest.approx(target, abs=0.02)
  assert final["nnz"] == sum(layer["nnz"] for layer in results["layers"].values())
  for layer in results["layers"].values():
    assert set(layer) >= {"shape", "sparsity", "nnz"} and layer["nnz"] <= np.prod(layer["shape"])
  assert results["levels"] == [] and results["layer_collapse"] == []
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  # Logged every 2 steps, evaluated every 3, both at the end.
  assert [r["step"] for r in records] == sorted(set(range(2, steps_ + 1, 2)) | set(range(3, steps_ + 1, 3)))
  assert {"train_loss", "train_accuracy", "learning_rate", "sparsity", "wall_seconds"} <= set(records[-1])
  assert "test_accuracy" in records[-1]
  for name in ("config.json", "training.png", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_mlp_run_compiles_once_then_is_not_redone(tiny_data, tmp_path, capsys):
  traces = steps.TRACES["train_step"]
  results = train.train_and_evaluate(tiny_config("mlp"), str(tmp_path))
  _check_results(results, str(tmp_path), 6, 0.5)
  # One trace of the train step for the whole run, although the masks changed at every logged step.
  assert steps.TRACES["train_step"] - traces == 1
  sparsities = [r["sparsity"] for r in report.read_metrics(str(tmp_path))]
  assert all(a < b for a, b in zip(sparsities, sparsities[1:])), sparsities
  # Run again: the finished run is printed and returned, nothing is trained, compiled or rewritten.
  metrics = open(os.path.join(tmp_path, "metrics.jsonl")).read()
  traces = dict(steps.TRACES)
  capsys.readouterr()
  again = train.train_and_evaluate(tiny_config(progress="bar"), str(tmp_path))  # display fields may differ
  assert again == json.loads(json.dumps(results)) and dict(steps.TRACES) == traces
  assert open(os.path.join(tmp_path, "metrics.jsonl")).read() == metrics
  assert "test accuracy" in capsys.readouterr().out
  with pytest.raises(ValueError, match="training.learning_rate"):
    train.train_and_evaluate(tiny_config(learning_rate=0.5), str(tmp_path))


@pytest.mark.parametrize("model", [pytest.param("lenet5", marks=pytest.mark.slow),
                                   pytest.param("resnet20", marks=pytest.mark.slow)])
def test_conv_models_end_to_end(model, tiny_data, tmp_path):
  tiny_data.shape = INPUT_SHAPES[model]
  results = train.train_and_evaluate(tiny_config(model), str(tmp_path))
  _check_results(results, str(tmp_path), 6, 0.5)
  assert results["model"] == model and results["algorithm"] == "gmp"


def test_pruning_at_init_installs_masks_before_the_first_step(tiny_data, tmp_path):
  config = tiny_config(steps=2, log_every=1)
  config["sparsity"] = {"algorithm": "snip", "target": 0.8}
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results["final"]["sparsity"] == pytest.approx(0.8, abs=0.01) and results["algorithm"] == "snip"
  assert report.read_metrics(str(tmp_path))[0]["sparsity"] == pytest.approx(0.8, abs=0.01)  # already at step 1


def test_the_engine_raises_what_its_updates_record_after_the_first_step(tiny_data, tmp_path, monkeypatch):
  """The engine's steps keep no host callback (sparsify check="record"); its hooks raise what the updates recorded:
  here snip's masks are not installed (as a bug in the install would leave them), found after step 1 of 20,
  before any record or checkpoint is written."""
  monkeypatch.setattr(train, "install_masks_at_init", lambda state, *a, **k: state)
  config = tiny_config(steps=20, log_every=10)
  config["sparsity"] = {"algorithm": "snip", "target": 0.8}
  with pytest.raises(ValueError, match="computes its masks outside the optimizer, and none were installed"):
    train.train_and_evaluate(config, str(tmp_path))
  assert report.read_metrics(str(tmp_path)) == []


BAD_CONFIGS = [
    ({"training": {"optimizer": "rmsprop"}}, "config.training.optimizer"),
    ({"training": {"learning_rte": 0.1}}, "config.training.learning_rte"),
    ({"training": {"label_smoothing": 1.5}}, "config.training.label_smoothing"),
    ({"training": {"num_epochs": 2.0}}, "num_epochs"),
    ({"training": {"lr_boundaries": [0.7, 0.2]}}, "config.training.lr_boundaries"),
    ({"training": {"batch_size": 12}, "mesh": {"data_parallel": 8}}, "config.training.batch_size"),
    ({"mesh": {"data_parallel": 0}}, "config.mesh.data_parallel"),
    ({"mesh": {"data_parallel": 64}}, "config.mesh.data_parallel"),
    ({"sparsity": {"algorithm": "bogus"}}, "config.sparsity.algorithm"),
    ({"sparsity": {"prunable": ["no_such_layer"]}}, "config.sparsity.prunable"),
    ({"model": {"name": "bogus"}}, "bogus"),
    ({"extra": 1}, "config.extra"),
]


def _merge(base, override):
  out = dict(base)
  for key, value in override.items():
    out[key] = _merge(base[key], value) if isinstance(value, dict) and key in base else value
  return out


@pytest.mark.parametrize("override,field", BAD_CONFIGS)
def test_config_errors_before_any_compile_or_write(override, field, tiny_data, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  traces = dict(steps.TRACES)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    train.train_and_evaluate(_merge(tiny_config(), override), str(workdir))
  assert os.listdir(workdir) == [] and dict(steps.TRACES) == traces


def test_foreign_workdir_is_refused(tiny_data, tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="not empty"):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert os.listdir(tmp_path) == ["notes.txt"]


def test_evaluate_excludes_padding():
  data = TinyDataset(num_test=10)
  config = config_validation.validate(tiny_config())
  model = train.create_model("mlp", 10)
  mesh = parallel.create_mesh(None)
  state = train.create_train_state(config, model, data, jax.random.PRNGKey(0), mesh=mesh)
  eval_fn = train.make_eval_step(model, mesh)
  got = train.evaluate(eval_fn, state, data, "test", 4, mesh)  # batches of 4, 4, 2 real + 2 padding
  logits = model.apply({"params": state.params}, data.x[data.num_train:])
  labels = data.y[data.num_train:]
  want_loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
  assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
  assert got["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))


def _training(**fields):
  base = {"model": {"name": "mlp"}, "data": {"name": "x"}, "training": {"num_steps": 100, **fields}}
  return config_validation.validate(base).training


def test_lr_schedules():
  step = optim.make_lr_schedule(_training(lr_schedule="step", lr_boundaries=[0.5, 0.75]), 100)
  assert [float(step(t)) for t in (0, 49, 50, 74, 75)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001])
  cosine = optim.make_lr_schedule(_training(lr_schedule="cosine"), 100)
  # step 100 is past the run: only fine-tuning gets there, at learning_rate * lr_decay_factor
  assert [float(cosine(t)) for t in (0, 50, 99, 100)] == pytest.approx([0.1, 0.05, 2.4673e-5, 0.01], abs=1e-7)
  warm = optim.make_lr_schedule(_training(lr_schedule="warmup_cosine", warmup_steps=10), 100)
  assert [float(warm(t)) for t in (0, 5, 10, 55, 100)] == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.01], abs=1e-7)
  with pytest.raises(ValueError, match="warmup_steps"):
    config_validation.num_train_steps(_training(warmup_steps=100), 1000)
  assert config_validation.num_train_steps(_training(num_steps=None, num_epochs=1.5, batch_size=64), 1000) == 24


@pytest.mark.parametrize("name,want", [("sgd", -0.2), ("momentum", -0.2), ("nesterov", -0.38), ("adam", -0.1),
                                       ("adamw", -0.2)])
def test_weight_decay(name, want):
  tx = optim.make_optimizer(_training(optimizer=name, learning_rate=0.1, weight_decay=0.5), 100)
  params = {"w": jnp.array([4.0])}
  updates, _ = tx.update({"w": jnp.zeros(1)}, tx.init(params), params)
  # With a zero gradient only the decay moves the weight. L2 adds wd * w = 2 to the gradient and goes through the
  # optimizer (Adam normalises it to a step of lr; Nesterov looks ahead: lr * (1 + momentum) * 2); AdamW's decoupled
  # decay is -lr * wd * w whatever Adam does.
  assert float(updates["w"][0]) == pytest.approx(want, rel=1e-3)


def test_label_smoothing_loss():
  logits = jnp.array([[2.0, 0.0, 0.0]])
  plain = steps.cross_entropy(logits, jnp.array([0]))
  smooth = steps.cross_entropy(logits, jnp.array([0]), 0.3)
  log_p = jax.nn.log_softmax(logits)[0]
  assert float(plain[0]) == pytest.approx(float(-log_p[0]))
  assert float(smooth[0]) == pytest.approx(float(-(0.8 * log_p[0] + 0.1 * log_p[1] + 0.1 * log_p[2])))


def test_launcher_subprocess(tmp_path):
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.train", "--config=configs/mnist1d_mlp_gmp.py", f"--workdir={workdir}",
         "--config.training.num_steps=60", "--config.training.eval_every=30", "--config.training.log_every=20",
         "--config.training.progress=lines"]
  env = dict(os.environ, XLA_FLAGS="")
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  assert results["final"]["step"] == 60 and results["algorithm"] == "gmp" and results["dataset"] == "mnist1d"
  assert results["final"]["sparsity"] == pytest.approx(0.9, abs=0.01)  # end_step scales with num_steps
  assert "step      60/60" in proc.stdout
  config = json.load(open(workdir / "config.json"))
  assert config["sparsity"]["end_step"] == 45 and config["training"]["num_steps"] == 60


@pytest.mark.parametrize("name", ["default", "mnist1d_mlp_dense", "mnist1d_mlp_gmp", "fashion_mnist_lenet300_dense",
                                  "fashion_mnist_lenet300_gmp", "cifar10_resnet20_gmp"])
def test_configs_validate(name, monkeypatch):
  monkeypatch.syspath_prepend(REPO)
  config = importlib.import_module(f"configs.{name}").get_config()
  assert isinstance(config, ml_collections.ConfigDict)
  config_validation.validate(config)
  sj.create_pruner(config.sparsity)
  doc = importlib.import_module(f"configs.{name}").__doc__  # the docstring gives the command (an alias: its new form)
  assert f"configs/{name}.py" in doc or f"configs/{name.rpartition('_')[0]}.py:method=" in doc


@pytest.mark.slow  # compiling ResNet-20; the TFDS path also runs fast in test_lottery_configs (conv2 on mock CIFAR-10)
def test_cifar10_resnet20_gmp_config_on_mock_tfds_data(tmp_path, monkeypatch):
  """The real CIFAR-10 config, shrunk to a few steps, end to end on `tfds.testing.mock_data` (no download, no TF)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  monkeypatch.syspath_prepend(REPO)
  config = importlib.import_module("configs.cifar10_resnet20_gmp").get_config()
  config.training.num_steps = 4           # begin_step / end_step follow: 0 and 3
  config.training.warmup_steps = 1
  config.training.batch_size = config.training.eval_batch_size = 4
  config.training.update(eval_every=2, log_every=2, checkpoint_every=2, progress="none")
  config.sparsity.update_every = 1
  with tfds.testing.mock_data(num_examples=8):
    results = train.train_and_evaluate(config, str(tmp_path))
  assert (results["dataset"], results["model"], results["algorithm"]) == ("cifar10", "resnet20", "gmp")
  final = results["final"]
  assert final["step"] == 4 and 0.0 <= final["test_accuracy"] <= 1.0
  assert final["sparsity"] == pytest.approx(0.9, abs=0.01)  # erk: layer sparsities differ, the total is the target
  layer = results["layers"]
  assert len({round(d["sparsity"], 3) for d in layer.values()}) > 1
  assert final["nnz"] == sum(d["nnz"] for d in layer.values())


def test_results_report_layer_collapse_counted_from_the_arrays():
  config = ml_collections.ConfigDict({"sparsity": {"algorithm": "snip", "min_density": 0.05},
                                      "data": {"name": "tiny"}, "model": {"name": "mlp"}})
  masks = {"a": jnp.zeros((4, 5), bool), "b": jnp.zeros((10, 10), bool).at[0, :4].set(True),
           "c": jnp.ones((3, 3), bool)}
  summary = sj.summary(masks)
  results = report.make_results(config, 10, {"accuracy": 0.5, "loss": 1.0}, summary, 1.0)
  assert results["layer_collapse"] == ["a", "b"]  # a is empty, b keeps 4 < ceil(0.05 * 100) = 5
  assert "warning: layer collapse" in report.format_results(results)
  config.sparsity.min_density = 0.0
  assert report.make_results(config, 10, {"accuracy": 0.5, "loss": 1.0}, summary, 1.0)["layer_collapse"] == ["a"]
