"""Every bad input through the launcher: exit status 2, one message naming the field and what is accepted, no traceback,
nothing written or overwritten. Most cases run the launcher in this process (`experiments.train.run`); a few run it
as a subprocess, as a user would."""
import io
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
from experiments import train as launcher  # noqa: E402

BASE = "configs/mnist1d_mlp_gmp.py"  # gmp to 90%, 3000 steps, end_step 2250

S = "--config.sparsity."
T = "--config.training."
CASES = [  # (id, extra flags, text the message must contain)
    ("target_nan", [S + "target=nan"], "config.sparsity.target: got nan"),
    ("target_inf", [S + "target=inf"], "config.sparsity.target: got inf"),
    ("target_negative", [S + "target=-0.1"], "config.sparsity.target: got -0.1"),
    ("target_one", [S + "target=1.0"], "config.sparsity.target: got 1.0"),
    ("min_density_nan", [S + "min_density=nan"], "config.sparsity.min_density"),
    ("min_density_negative", [S + "min_density=-1"], "config.sparsity.min_density"),
    ("min_density_above_one", [S + "min_density=1.5"], "config.sparsity.min_density"),
    ("power_nan", [S + "power=nan"], "config.sparsity.power"),
    ("power_zero", [S + "power=0"], "config.sparsity.power"),
    ("power_negative", [S + "power=-1"], "config.sparsity.power"),
    ("drop_fraction_nan", [S + "drop_fraction=nan"], "config.sparsity.drop_fraction"),
    ("drop_fraction_above_one", [S + "drop_fraction=1.5"], "config.sparsity.drop_fraction"),
    ("prune_fraction_nan", [S + "prune_fraction=nan"], "config.sparsity.prune_fraction"),
    ("prune_fraction_zero", [S + "prune_fraction=0"], "config.sparsity.prune_fraction"),
    ("prune_fraction_one", [S + "prune_fraction=1"], "config.sparsity.prune_fraction"),
    ("temperature_inf", [S + "temperature=inf"], "config.sparsity.temperature"),
    ("temperature_zero", [S + "temperature=0"], "config.sparsity.temperature"),
    ("initial_sparsity_nan", [S + "initial_sparsity=nan"], "config.sparsity.initial_sparsity"),
    ("initial_sparsity_one", [S + "initial_sparsity=1"], "config.sparsity.initial_sparsity"),
    ("begin_step_negative", [S + "begin_step=-1"], "config.sparsity.begin_step"),
    ("end_step_negative", [S + "end_step=-5"], "config.sparsity.end_step"),
    ("update_every_zero", [S + "update_every=0"], "config.sparsity.update_every"),
    ("levels_negative", [S + "levels=-1"], "config.sparsity.levels"),
    ("rewind_step_negative", [S + "rewind_step=-1"], "config.sparsity.rewind_step"),
    ("iterations_zero", [S + "iterations=0"], "config.sparsity.iterations"),
    ("num_batches_zero", [S + "num_batches=0"], "config.sparsity.num_batches"),
    ("sparsity_seed_negative", [S + "seed=-1"], "config.sparsity.seed"),
    ("algorithm_unknown", [S + "algorithm=magic"], "config.sparsity.algorithm: got 'magic'"),
    ("distribution_unknown", [S + "distribution=normal"], "config.sparsity.distribution: got 'normal'"),
    ("granularity_unknown", [S + "granularity=3-4"], "config.sparsity.granularity"),
    ("rewind_unknown", [S + "rewind=later"], "config.sparsity.rewind: got 'later'"),
    ("control_unknown", [S + "control=maybe"], "config.sparsity.control: got 'maybe'"),
    ("drop_schedule_unknown", [S + "drop_schedule=exp"], "config.sparsity.drop_schedule: got 'exp'"),
    ("init_distribution_unknown", [S + "init_distribution=global"], "config.sparsity.init_distribution"),
    ("initial_unknown", [S + "initial=half"], "config.sparsity.initial: got 'half'"),
    ("nm_n_above_m", [S + "granularity=5:4"], "config.sparsity.granularity"),
    ("nm_zero", [S + "granularity=0:4"], "config.sparsity.granularity"),
    ("block_one_dim", [S + "granularity=block:4"], "config.sparsity.granularity"),
    ("block_zero", [S + "granularity=block:0x4"], "config.sparsity.granularity"),
    ("nm_wrong_target", [S + "granularity=2:4"], "config.sparsity.target"),
    ("nm_axis_out_of_range", [S + "granularity=2:4", S + "target=0.5", S + "nm_axis=7"], "nm_axis=7"),
    ("nm_with_set", [S + "algorithm=set", S + "granularity=2:4", S + "target=0.5"], "config.sparsity.granularity"),
    ("global_with_rigl", [S + "algorithm=rigl", S + "distribution=global"], "config.sparsity.distribution"),
    ("prunable_bad_regex", [S + "prunable=('(unclosed',)"], "config.sparsity.prunable"),
    ("prunable_matches_nothing", [S + "prunable=('nomatch',)"], "config.sparsity.prunable"),
    ("overrides_no_match", [], None),  # placeholder replaced below (dict fields are set in a config file)
    ("end_step_at_num_steps", [S + "end_step=3000"], "config.sparsity.end_step: got 3000"),
    ("oneshot_after_the_run", [S + "algorithm=oneshot", S + "begin_step=5000", S + "end_step=5000"],
     "config.sparsity.begin_step: got 5000"),
    ("imp_zero_levels", [S + "algorithm=imp", S + "levels=0"], "config.sparsity.levels"),
    ("imp_rewind_step_after_run", [S + "algorithm=imp", S + "levels=1", S + "rewind=step", S + "rewind_step=4000"],
     "config.sparsity.rewind_step"),
    ("learning_rate_negative", [T + "learning_rate=-1"], "config.training.learning_rate"),
    ("learning_rate_nan", [T + "learning_rate=nan"], "config.training.learning_rate"),
    ("batch_size_zero", [T + "batch_size=0"], "config.training.batch_size"),
    ("batch_size_above_data", [T + "batch_size=100000"], "config.training.batch_size: got 100000"),
    ("optimizer_unknown", [T + "optimizer=rmsprop2"], "config.training.optimizer"),
    ("lr_schedule_unknown", [T + "lr_schedule=weird"], "config.training.lr_schedule"),
    ("momentum_above_one", [T + "momentum=2"], "config.training.momentum"),
    ("num_steps_zero", [T + "num_steps=0"], "config.training.num_steps"),
    ("num_steps_text", [T + "num_steps=abc"], "config.training.num_steps"),
    ("weight_decay_negative", [T + "weight_decay=-1"], "config.training.weight_decay"),
    ("label_smoothing_above_one", [T + "label_smoothing=1.5"], "config.training.label_smoothing"),
    ("warmup_negative", [T + "warmup_steps=-1"], "config.training.warmup_steps"),
    ("keep_checkpoints_zero", [T + "keep_checkpoints=0"], "config.training.keep_checkpoints"),
    ("data_parallel_above_devices", ["--config.mesh.data_parallel=64"], "config.mesh.data_parallel"),
    ("data_parallel_zero", ["--config.mesh.data_parallel=0"], "config.mesh.data_parallel"),
    ("seed_negative", ["--config.seed=-1"], "config.seed"),
    ("model_unknown", ["--config.model.name=resnet999"], "config.model.name: got 'resnet999'"),
    ("model_init_unknown", ["--config.model.kernel_init=magic"], "kernel_init"),
    ("data_source_unknown", ["--config.data.source=web"], "config.data.source"),
    ("validation_size_negative", ["--config.data.validation_size=-1"], "config.data.validation_size"),
    ("field_misspelled", [S + "targte=0.5"], "config.sparsity.targte: unknown field (did you mean config.sparsity."
     "target"),
    ("training_field_misspelled", [T + "lerning_rate=0.1"], "config.training.lerning_rate: unknown field"),
    ("unknown_flag", ["--bogus=1"], "--bogus: unknown flag"),
]
CASES = [c for c in CASES if c[2] is not None]


def _run(argv):
  err = io.StringIO()
  rc = launcher.run(["train", *argv], stderr=err)
  return rc, err.getvalue()


def _check(rc, err, want, workdir):
  assert rc == 2, err
  assert "Traceback" not in err, err
  lines = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and want in lines[0], err
  assert not os.path.exists(workdir), "a bad input wrote the workdir"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)


@pytest.mark.parametrize("flags,want", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_flag(flags, want, tmp_path):
  workdir = tmp_path / "run"
  rc, err = _run([f"--config={BASE}", f"--workdir={workdir}", *flags])
  _check(rc, err, want, workdir)


def _config_file(tmp_path, body):
  path = tmp_path / "my_config.py"
  path.write_text(body)
  return str(path)


CONFIG_FILES = [
    ("missing", None, "No such file"),
    ("syntax_error", "def get_config(:\n", "--config: invalid syntax"),
    ("get_config_raises", "def get_config():\n  raise RuntimeError('no such experiment')\n", "no such experiment"),
    ("no_get_config", "x = 1\n", "--config:"),
    ("overrides_match_nothing", "from configs import mnist1d_mlp_gmp\n\ndef get_config():\n"
     "  c = mnist1d_mlp_gmp.get_config()\n  c.sparsity.overrides = {'nothing_here': 0.5}\n  return c\n",
     "config.sparsity.overrides"),
    ("unknown_top_level", "from configs import default\n\ndef get_config():\n  c = default.get_config()\n"
     "  c.unlocked = 1\n  return c\n", "config.unlocked"),
]


@pytest.mark.parametrize("name,body,want", CONFIG_FILES, ids=[c[0] for c in CONFIG_FILES])
def test_bad_config_file(name, body, want, tmp_path):
  path = str(tmp_path / "nope.py") if body is None else _config_file(tmp_path, body)
  workdir = tmp_path / "run"
  rc, err = _run([f"--config={path}", f"--workdir={workdir}"])
  _check(rc, err, want, workdir)


@pytest.mark.parametrize("argv,want", [([f"--config={BASE}"], "--workdir: required"),
                                       (["--workdir=/tmp/x"], "--config: required")], ids=["no_workdir", "no_config"])
def test_missing_flags(argv, want):
  rc, err = _run(argv)
  assert rc == 2 and want in err and "Traceback" not in err


def test_help_answers_with_the_flags(capsys):
  assert launcher.run(["train", "--help"]) == 0
  out = capsys.readouterr().out
  assert "--workdir" in out and "Exit status" in out


def test_workdir_empty_string():
  rc, err = _run([f"--config={BASE}", "--workdir="])
  assert rc == 2 and "--workdir: got ''" in err and "Traceback" not in err


def test_workdir_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("mine")
  rc, err = _run([f"--config={BASE}", f"--workdir={path}"])
  assert rc == 2 and "which is a file" in err and path.read_text() == "mine"


def test_workdir_under_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("mine")
  rc, err = _run([f"--config={BASE}", f"--workdir={path}/run"])
  assert rc == 2 and "--workdir" in err and "cannot be created" in err and path.read_text() == "mine"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only directory")
def test_workdir_read_only(tmp_path):
  path = tmp_path / "ro"
  path.mkdir()
  path.chmod(0o555)
  rc, err = _run([f"--config={BASE}", f"--workdir={path}"])
  assert rc == 2 and "cannot write" in err


def test_workdir_of_someone_else(tmp_path):
  (tmp_path / "notes.txt").write_text("mine")
  rc, err = _run([f"--config={BASE}", f"--workdir={tmp_path}"])
  assert rc == 2 and "holds no config.json" in err and sorted(os.listdir(tmp_path)) == ["notes.txt"]


def _resolved(extra=()):
  from sparsejax import validation
  sys.path.insert(0, REPO)
  from configs import mnist1d_mlp_lth
  config = mnist1d_mlp_lth.get_config()
  for key, value in extra:
    setattr(config.sparsity, key, value)
  return validation.validate(config)


def test_workdir_of_a_different_config(tmp_path):
  from sparsejax import report
  report.write_config(str(tmp_path), _resolved())
  before = (tmp_path / "config.json").read_text()
  rc, err = _run(["--config=configs/mnist1d_mlp_lth.py", f"--workdir={tmp_path}", S + "prune_fraction=0.3"])
  assert rc == 2 and "different config" in err and "prune_fraction" in err
  assert (tmp_path / "config.json").read_text() == before


def test_a_default_set_explicitly_is_the_same_config(tmp_path):
  """config.json holds the resolved config, so an explicit default (seed None vs the config's seed) resumes."""
  from sparsejax import report, validation
  report.write_config(str(tmp_path), _resolved())
  again = validation.validate(_resolved([("seed", 0), ("power", 3.0)]))
  assert report.check_workdir(str(tmp_path), again)


def test_imp_with_fewer_levels_than_finished_is_refused(tmp_path):
  from sparsejax import report
  report.write_config(str(tmp_path), _resolved())
  levels = [{"level": i} for i in range(13)]
  (tmp_path / "levels.json").write_text(json.dumps(levels))
  (tmp_path / "results.json").write_text(json.dumps({"levels": levels}))
  rc, err = _run(["--config=configs/mnist1d_mlp_lth.py", f"--workdir={tmp_path}", S + "levels=5"])
  assert rc == 2 and "config.sparsity.levels: got 5" in err and "12 finished levels" in err
  assert json.loads((tmp_path / "levels.json").read_text()) == levels


def test_every_documented_sparsity_field_is_settable_on_every_config(tmp_path):
  """`--config.sparsity.<field>` works on every shipped config (lottery and method configs included)."""
  from sparsejax import config as sparsity_config, validation
  import importlib
  for path in sorted(f for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py")):
    if path in ("methods.py", "__init__.py"):
      continue
    config = importlib.import_module(f"configs.{path[:-3]}").get_config()
    assert set(sparsity_config.DEFAULTS) <= set(config.sparsity.keys()), path
    validation.validate(config)


def test_seed_changes_random_masks():
  from sparsejax import validation
  import sparsejax as sj
  import jax.numpy as jnp
  from configs import mnist1d_mlp_random
  masks = []
  for seed in (0, 1):
    config = mnist1d_mlp_random.get_config()
    config.seed = seed
    pruner = sj.create_pruner(validation.validate(config).sparsity)
    masks.append(pruner.init({"w": jnp.ones((100, 100))}).masks["w"])
  assert int(jnp.sum(masks[0] != masks[1])) > 1000


@pytest.mark.parametrize("flags,want", [
    ([S + "target=nan"], "config.sparsity.target"),
    ([S + "targte=0.5"], "did you mean config.sparsity.target"),
    (["--config=configs/none.py"], "No such file"),
    (["--config=configs/text_gpt.py:bogus"], "argument method: got 'bogus'; accepted values: one of dense, gmp, rigl, nm24, heads"),
    (["--config=configs/mnist1d_mlp.py:method=rigl,tagret=0.5"], "unknown argument 'tagret' (did you mean target?)"),
], ids=["nan", "misspelled", "missing_file", "config_argument", "config_argument_key"])
def test_subprocess_exit_status_and_no_traceback(flags, want, tmp_path):
  workdir = tmp_path / "run"
  argv = [sys.executable, "-m", "experiments.train", f"--config={BASE}", f"--workdir={workdir}", *flags]
  proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr and want in proc.stderr
  assert not workdir.exists()


def test_multihost_with_a_partial_set_of_jax_variables(tmp_path, monkeypatch):
  """--config.mesh.multihost=True with JAX_COORDINATOR_ADDRESS but no process count: exit 2 naming what is missing,
  before anything is written (jax.distributed.initialize() would fail later with "Number of processes must be
  defined")."""
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:12345")
  monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
  monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
  workdir = tmp_path / "run"
  rc, err = _run([f"--config={BASE}", f"--workdir={workdir}", "--config.mesh.multihost=True"])
  assert rc == 2 and "config.mesh.multihost: JAX_NUM_PROCESSES, JAX_PROCESS_ID not set" in err, err
  assert "Traceback" not in err and not workdir.exists()
