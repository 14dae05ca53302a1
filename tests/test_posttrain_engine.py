"""The engine's post-training pruning (`config.posttrain`, `config.init_from`; sparsejax/posttrain_run.py): a dense
tiny MLP pruned by Wanda and recovered, the kernels PERP's bias_norm recovery leaves alone, resume, the weights
init_from starts a run from, and bad inputs through the launcher."""
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import sparsejax as sj
from sparsejax import checkpoint, report, steps, train
from tiny_dataset import TinyDataset, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from experiments import train as launcher  # noqa: E402


def _tiny(monkeypatch):
  monkeypatch.setattr(train, "create_dataset", lambda data_config, seed: TinyDataset(input_shape=(40,), seed=seed))


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
  """A finished dense run of the tiny MLP (4 steps): the `init_from` of the tests."""
  workdir = str(tmp_path_factory.mktemp("dense"))
  with pytest.MonkeyPatch.context() as mp:
    _tiny(mp)
    config = tiny_config(steps=4)
    config["sparsity"] = {"algorithm": "dense"}
    train.train_and_evaluate(config, workdir)
  return workdir


def _config(init_from, steps_=4, **posttrain):
  config = tiny_config(steps=steps_, checkpoint_every=2, keep_checkpoints=5)
  config["sparsity"] = {"algorithm": "dense"}
  config["init_from"] = init_from
  config["posttrain"] = {"method": "wanda", "target": 0.5, "calibration_batches": 2, **posttrain}
  return config


def _states(workdir, config):
  """{step: TrainState} of every checkpoint in `workdir`, restored into the run's own structure."""
  setup = train.build(config)
  from sparsejax import posttrain_run  # pylint: disable=g-import-not-at-top
  tx = posttrain_run.recovery_tx(setup.config, setup.num_steps)
  target = train.create_train_state(setup.config, setup.model, setup.dataset, jax.random.PRNGKey(0), tx,
                                    prune_at_init=False)
  manager = checkpoint.create_manager(workdir, 5)
  out = {s: jax.device_get(checkpoint.restore(manager, s, target)) for s in manager.all_steps()}
  manager.close()
  return out


def _kernels(params):
  return {p: x for p, x in sj.masks.flatten_with_paths(params) if p.endswith("kernel")}


def test_wanda_with_sparse_recovery_end_to_end(dense_run, tmp_path, monkeypatch, capsys):
  _tiny(monkeypatch)
  workdir = str(tmp_path / "wanda")
  config = _config(dense_run, recovery="sparse")
  results = train.train_and_evaluate(config, workdir)
  assert results == report.read_results(workdir)
  pt = results["posttrain"]
  assert (pt["method"], pt["target"], pt["recovery"], pt["init_from"]) == ("wanda", 0.5, "sparse", dense_run)
  for phase in ("dense", "pruned", "recovered"):
    assert set(pt[phase]) == {"loss", "accuracy"} and np.isfinite(pt[phase]["loss"]), phase
  assert results["algorithm"] == "posttrain:wanda" and results["status"] == "finished"
  # The final numbers are the recovered model's, its sparsity counted from the arrays: exactly the target, per layer.
  final = results["final"]
  assert final["step"] == 4 and final["test_accuracy"] == pt["recovered"]["accuracy"]
  assert final["sparsity"] == 0.5 and final["nnz"] * 2 == final["prunable_params"]
  assert all(layer["sparsity"] == 0.5 for layer in results["layers"].values())
  assert set(pt["layers"]) == set(results["layers"])
  records = report.read_metrics(workdir)
  assert records[0]["step"] == 0 and records[0]["test_accuracy"] == pt["pruned"]["accuracy"]
  assert records[-1]["step"] == 4 and records[0]["sparsity"] == records[-1]["sparsity"] == 0.5
  for name in ("config.json", "posttrain.json", "training.png"):
    assert os.path.exists(os.path.join(workdir, name)), name
  # Checkpoint 0 is the pruned model; in every checkpoint the masks are its masks and the pruned weights exactly 0.
  states = _states(workdir, config)
  assert 0 in states and 4 in states
  masks0 = sj.get_masks(states[0].opt_state)
  for state in states.values():
    masks = sj.get_masks(state.opt_state)
    for path, kernel in _kernels(state.params).items():
      mask = dict(sj.masks.flatten_with_paths(masks))[path]
      np.testing.assert_array_equal(mask, dict(sj.masks.flatten_with_paths(masks0))[path])
      assert np.all(kernel[~mask] == 0) and mask.mean() == 0.5
  moved = [p for p, k in _kernels(states[4].params).items() if not np.array_equal(k, _kernels(states[0].params)[p])]
  assert moved, "recovery 'sparse' trained no kernel"
  # A rerun of the finished workdir returns its results without compiling anything.
  traces = dict(steps.TRACES)
  capsys.readouterr()
  assert train.train_and_evaluate(config, workdir) == results and dict(steps.TRACES) == traces
  assert "posttrain:wanda" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_recovery_resumes_to_the_same_state(dense_run, tmp_path, monkeypatch):
  """A recovery stopped after checkpoint 2 (its later files removed, as a SIGKILL leaves them) ends where an
  uninterrupted one does, without pruning again."""
  _tiny(monkeypatch)
  config = _config(dense_run, recovery="sparse", method="sparsegpt")
  whole = str(tmp_path / "whole")
  expected = train.train_and_evaluate(config, whole)
  killed = str(tmp_path / "killed")
  shutil.copytree(whole, killed)
  os.remove(os.path.join(killed, "results.json"))
  shutil.rmtree(os.path.join(killed, "checkpoints", "4"))
  calls = []
  monkeypatch.setattr(sj.posttrain, "prune", lambda *a, **k: calls.append(1))
  resumed = train.train_and_evaluate(config, killed)
  assert not calls, "a resumed run pruned again"
  assert resumed["final"] == expected["final"] and resumed["posttrain"]["recovered"] == expected["posttrain"]["recovered"]
  a, b = _states(whole, config)[4], _states(killed, config)[4]
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_bias_norm_recovery_trains_only_biases(dense_run, tmp_path, monkeypatch):
  _tiny(monkeypatch)
  workdir = str(tmp_path / "perp")
  config = _config(dense_run, steps_=2, recovery="bias_norm", method="magnitude", granularity="2:4")
  results = train.train_and_evaluate(config, workdir)
  assert results["final"]["sparsity"] == 0.5 and results["posttrain"]["recovered"] is not None
  states = _states(workdir, config)
  before, after = states[0].params, states[2].params
  for path, kernel in _kernels(after).items():
    np.testing.assert_array_equal(kernel, _kernels(before)[path])  # frozen, bit for bit
  biases = [(x, y) for (p, x), (_, y) in zip(sj.masks.flatten_with_paths(before), sj.masks.flatten_with_paths(after))
            if p.endswith("bias")]
  assert biases and any(not np.array_equal(x, y) for x, y in biases), "bias_norm trained no bias"


def test_recovery_none_saves_the_pruned_model(dense_run, tmp_path, monkeypatch):
  _tiny(monkeypatch)
  workdir = str(tmp_path / "oneshot")
  config = _config(dense_run, method="magnitude", target=0.7)
  results = train.train_and_evaluate(config, workdir)
  pt = results["posttrain"]
  assert pt["recovered"] is None and results["final"]["step"] == 0
  assert results["final"]["test_accuracy"] == pt["pruned"]["accuracy"]
  assert results["final"]["sparsity"] == pytest.approx(0.7, abs=1e-4)
  state = _states(workdir, config)[0]
  assert sj.summary(sj.get_masks(state.opt_state), state.params)["total"]["sparsity"] == pytest.approx(0.7, abs=1e-4)


def test_init_from_starts_a_run_from_those_weights(dense_run, tmp_path, monkeypatch):
  """Without posttrain, init_from is the starting point of an ordinary run: one step at a negligible rate ends with
  the dense run's test loss."""
  _tiny(monkeypatch)
  config = tiny_config(steps=1, optimizer="sgd", learning_rate=1e-12, checkpoint_every=1)
  config["sparsity"] = {"algorithm": "dense"}
  config["init_from"] = dense_run
  results = train.train_and_evaluate(config, str(tmp_path / "from"))
  dense = report.read_results(dense_run)["final"]
  assert results["final"]["test_loss"] == pytest.approx(dense["test_loss"], abs=1e-5)
  assert results["final"]["test_accuracy"] == dense["test_accuracy"]


def test_a_run_written_before_the_posttrain_fields_resumes(tmp_path):
  from sparsejax import validation  # pylint: disable=g-import-not-at-top
  config = validation.validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"}, "training": {"num_steps": 5}})
  old = report.config_to_dict(config)
  del old["posttrain"], old["init_from"]
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert report.check_workdir(str(tmp_path), config)
  config.posttrain.recovery = "sparse"  # a real difference still counts
  with pytest.raises(ValueError, match="posttrain.recovery"):
    report.check_workdir(str(tmp_path), config)


# -- bad inputs through the launcher: exit status 2, one line naming the field, nothing written --------------------

BASE = "configs/mnist1d_mlp_dense.py"
P = "--config.posttrain."


def _source(tmp_path, model=None, with_checkpoint=False):
  """A directory that looks like a run of BASE's model (config.json only, or a checkpoint directory too)."""
  src = tmp_path / "source"
  (src / "checkpoints" / ("3" if with_checkpoint else "")).mkdir(parents=True, exist_ok=True)
  config = {"model": {"name": "mnist1d_mlp", "kernel_init": None, "dtype": None, **(model or {})}}
  (src / "config.json").write_text(json.dumps(config))
  return str(src)


BAD = [  # (id, flags (SRC: an init_from of BASE's model), text of the message)
    ("method_unknown", ["--config.init_from=SRC", P + "method=obs"], "config.posttrain.method: got 'obs'"),
    ("init_from_missing", [P + "method=wanda"], "config.init_from: got None"),
    ("init_from_not_a_directory", ["--config.init_from=/no/such/run", P + "method=wanda"],
     "config.init_from: got '/no/such/run', which is not a directory"),
    ("init_from_without_checkpoint", ["--config.init_from=SRC_EMPTY", P + "method=wanda"], "holds no checkpoint"),
    ("init_from_other_model", ["--config.init_from=SRC_WIDE", P + "method=wanda"],
     "config.model.width: got None, but the run at config.init_from="),
    ("with_gmp", ["--config.init_from=SRC", P + "method=wanda", "--config.sparsity.algorithm=gmp",
                  "--config.sparsity.target=0.5", "--config.sparsity.end_step=100"],
     "config.sparsity.algorithm: got 'gmp' with config.posttrain.method 'wanda'"),
    ("nm_with_other_target", ["--config.init_from=SRC", P + "method=sparsegpt", P + "granularity=2:4",
                              P + "target=0.7"], "config.posttrain.target: got 0.7"),
    ("nm_not_dividing", ["--config.init_from=SRC", P + "method=wanda", P + "granularity=4:8"],
     "config.posttrain.granularity: got '4:8', but dense_1/kernel has 500 inputs"),
    ("granularity_unknown", ["--config.init_from=SRC", P + "method=wanda", P + "granularity=rows"],
     "config.posttrain.granularity"),
    ("recovery_unknown", ["--config.init_from=SRC", P + "method=wanda", P + "recovery=lora"],
     "config.posttrain.recovery: got 'lora'"),
    ("calibration_batches_zero", ["--config.init_from=SRC", P + "method=wanda", P + "calibration_batches=0"],
     "config.posttrain.calibration_batches: got 0"),
    ("owl_lambda_too_wide", ["--config.init_from=SRC", P + "method=wanda", P + "distribution=owl",
                             P + "target=0.9", P + "owl_lambda=0.1"], "config.posttrain.owl_lambda: got 0.1"),
    ("damp_nan", ["--config.init_from=SRC", P + "method=sparsegpt", P + "damp=nan"], "config.posttrain.damp"),
    ("init_from_with_imp", ["--config.init_from=SRC", "--config.sparsity.algorithm=imp",
                            "--config.sparsity.levels=1"], "config.init_from: got"),
    ("field_misspelled", [P + "methd=wanda"], "config.posttrain.methd: unknown field"),
]


@pytest.mark.parametrize("flags,want", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_posttrain_input(flags, want, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  sources = {"SRC_EMPTY": _source(tmp_path / "e"), "SRC_WIDE": _source(tmp_path / "w", {"width": 64}),
             "SRC": _source(tmp_path / "s", with_checkpoint=True)}
  flags = [f.split("=")[0] + "=" + sources[f.split("=")[1]] if f.split("=")[1] in sources else f for f in flags]
  workdir = tmp_path / "run"
  err = io.StringIO()
  rc = launcher.run(["train", f"--config={BASE}", f"--workdir={workdir}", *flags], stderr=err)
  err = err.getvalue()
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert rc == 2 and "Traceback" not in err, err
  assert len(lines) == 1 and want in lines[0], err
  assert not workdir.exists(), "a bad input wrote the workdir"


def test_gpt_config_takes_the_fields_from_the_command_line(tmp_path):
  """`--config=configs/text_gpt.py --config.init_from=... --config.posttrain.method=wanda` parses (the fields exist in
  configs/default.py); a missing run is then the error, exit status 2, as a user sees it."""
  workdir = tmp_path / "run"
  argv = [sys.executable, "-m", "experiments.train", "--config=configs/text_gpt.py", f"--workdir={workdir}",
          f"--config.init_from={tmp_path / 'no_run'}", "--config.posttrain.method=wanda",
          "--config.posttrain.recovery=bias_norm"]
  proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr and "error: config.init_from: got" in proc.stderr, proc.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_oneshot_reproduction_smoke(tmp_path, monkeypatch, capsys):
  """`python -m experiments.reproduce oneshot` on the MNIST-1D MLP, two methods, 50% and 4:8 (which the MLP's 500
  inputs refuse: n/a), a short dense run and recovery: report.md with the table and the checks, the plot, resume."""
  monkeypatch.chdir(REPO)
  from experiments import reproduce  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "oneshot")
  argv = ["oneshot", f"--workdir={workdir}", "--models=mnist1d_mlp", "--settings=s50,nm4_8",
          "--methods=magnitude,wanda", "--dense_steps=60", "--recovery_steps=4", "--no_compile_cache"]
  summary = reproduce.main(argv)
  runs = summary["mnist1d_mlp"]["runs"]
  assert set(runs) == {(m, s, r) for m in ("magnitude", "wanda") for s in ("s50", "nm4_8") for r in ("none", "sparse")}
  assert all("na" in runs[(m, "nm4_8", r)] for m in ("magnitude", "wanda") for r in ("none", "sparse"))
  assert not os.path.exists(os.path.join(workdir, "mnist1d_mlp", "wanda_nm4_8_none"))
  for m in ("magnitude", "wanda"):
    assert runs[(m, "s50", "none")]["final"]["sparsity"] == 0.5
    assert runs[(m, "s50", "sparse")]["posttrain"]["recovered"] is not None
  text = open(os.path.join(workdir, "report.md")).read()
  assert "| dense | | " in text and "| wanda | 50% | " in text and "| wanda | 4:8 | n/a | n/a |" in text
  assert "- (a) " in text and "- (b) " in text and "(c) OWL beats uniform at 70% for Wanda: **not measured**" in text
  assert os.path.exists(os.path.join(workdir, "oneshot.png"))
  # A second invocation reads every run back: nothing is trained or compiled.
  traces = dict(steps.TRACES)
  capsys.readouterr()
  again = reproduce.main(argv)
  assert dict(steps.TRACES) == traces
  assert again["mnist1d_mlp"]["runs"][("wanda", "s50", "sparse")] == runs[("wanda", "s50", "sparse")]


@pytest.mark.slow
def test_init_from_a_pruned_and_recovered_run(dense_run, tmp_path, monkeypatch):
  """A posttrain run (bias_norm recovery: another optimizer state) is itself an init_from: magnitude to 70% from it
  prunes every weight it had pruned (zeros are the smallest magnitudes) and 40% of the rest."""
  _tiny(monkeypatch)
  first = str(tmp_path / "first")
  train.train_and_evaluate(_config(dense_run, steps_=1, recovery="bias_norm"), first)
  config = _config(first, method="magnitude", target=0.7)
  second = str(tmp_path / "second")
  results = train.train_and_evaluate(config, second)
  assert results["posttrain"]["init_step"] == 1 and results["final"]["sparsity"] == pytest.approx(0.7, abs=1e-4)
  before = _kernels(_states(first, _config(dense_run, steps_=1, recovery="bias_norm"))[1].params)
  after = _kernels(_states(second, config)[0].params)
  for path, kernel in before.items():
    assert np.all(after[path][kernel == 0] == 0), path
