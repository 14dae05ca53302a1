"""Run files and checkpoints on any filesystem epath supports: a `gs://` workdir stays that remote path.

No network: `epath.testing.mock_epath` stands in for the gs:// backend and stores `gs://bucket/...` under a local
folder (`root`), recording every path and mode it is handed. Nothing may appear in the working directory (the bug: a
local folder named `gs:`), and every remote path handed to the filesystem must still start with `gs://`.
"""
import importlib.util
import json
import os

from etils import epath
import jax
import ml_collections
import numpy as np
import pytest

from sparsejax import checkpoint, report, validation

WORKDIR = "gs://bucket/run"


class _Remote:
  """A fake gs:// filesystem under `root`; `calls` holds (function, remote path, open mode or None)."""

  FUNCTIONS = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rename",
               "replace", "rmtree", "stat", "walk")

  def __init__(self, root):
    self.root, self.calls = root, []

  def local(self, path):
    """Where `gs://...` is stored; a local path as it is."""
    text = os.fspath(path)
    return os.path.join(self.root, text[len("gs://"):]) if text.startswith("gs://") else text

  def _wrap(self, name):
    def fn(original, path, *args, **kwargs):
      for arg in (path, *args):
        if isinstance(arg, (str, os.PathLike)) and "://" in os.fspath(arg):
          self.calls.append((name, os.fspath(arg), args[0] if name == "open" else None))
      args = [self.local(a) if isinstance(a, (str, os.PathLike)) else a for a in args]
      if name == "open" and "r" not in args[0] and os.fspath(path).startswith("gs://"):  # an object store has no
        os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)  # folders to create before a write
      return original(self.local(path), *args, **kwargs)
    return fn

  def mock(self):
    return epath.testing.mock_epath(**{name: self._wrap(name) for name in self.FUNCTIONS})


@pytest.fixture
def remote(tmp_path, monkeypatch):
  """The fake gs:// filesystem, with the working directory moved to an empty `tmp_path/cwd`."""
  monkeypatch.setenv("EPATH_USE_TF", "false")  # epath would prefer tf.io.gfile for gs:// when TensorFlow is installed
  (tmp_path / "cwd").mkdir()
  (tmp_path / "gcs" / "bucket").mkdir(parents=True)
  monkeypatch.chdir(tmp_path / "cwd")
  fake = _Remote(str(tmp_path / "gcs"))
  with fake.mock():
    yield fake
  assert os.listdir(tmp_path / "cwd") == [], "a remote path was written as a local folder"
  assert not [p for p in tmp_path.rglob("gs:*")], "a local folder named gs: was made"
  for _, path, _ in fake.calls:
    assert f"{path}/".startswith("gs://bucket/"), path


def _config(**training):
  return ml_collections.ConfigDict({"seed": 0, "model": {"name": "mlp"}, "training": {"progress": "none", **training}})


def test_run_files_of_a_gs_workdir_are_written_there(remote, tmp_path):
  local = tmp_path / "gcs" / "bucket" / "run"
  assert not report.check_workdir(WORKDIR, _config())  # missing: a new run
  report.write_config(WORKDIR, _config())
  assert json.loads((local / "config.json").read_text())["seed"] == 0
  assert report.check_workdir(WORKDIR, _config(progress="bar"))  # the same config: resume
  with pytest.raises(ValueError, match="different config.*seed"):
    report.check_workdir(WORKDIR, ml_collections.ConfigDict({**_config().to_dict(), "seed": 1}))

  with report.MetricsWriter(WORKDIR, resume_step=0) as writer:
    assert isinstance(writer.path, epath.Path) and os.fspath(writer.path) == f"{WORKDIR}/metrics.jsonl"
    for step in (1, 2, 3):
      writer.write({"step": step, "train_loss": 1.0 / step, "sparsity": 0.5, "test_accuracy": 0.1 * step})
      assert len(report.read_metrics(WORKDIR)) == step  # whole after every record
  with report.MetricsWriter(WORKDIR, resume_step=2) as writer:  # a resume drops the records past its checkpoint
    writer.write({"step": 4, "train_loss": float("nan")})
  assert [r["step"] for r in report.read_metrics(WORKDIR)] == [1, 2, 4]
  assert report.read_metrics(WORKDIR)[-1]["train_loss"] is None
  assert not [c for c in remote.calls if c[0] == "open" and "a" in c[2]], "object stores cannot append"

  report.write_results(WORKDIR, {"final": {"test_loss": float("inf")}})
  assert report.read_results(WORKDIR) == {"final": {"test_loss": None}}
  report.write_json(f"{WORKDIR}/levels/00_ticket/best.json", {"step": 3})
  assert report.read_json(f"{WORKDIR}/levels/00_ticket/best.json") == {"step": 3}
  assert report.read_json(f"{WORKDIR}/missing.json") is None

  plot = report.plot_run(WORKDIR, report.read_metrics(WORKDIR), {"dense/kernel": {"sparsity": 0.5}})
  assert plot == f"{WORKDIR}/training.png" and (local / "training.png").read_bytes()[:4] == b"\x89PNG"
  assert sorted(os.listdir(local)) == ["config.json", "levels", "metrics.jsonl", "results.json", "training.png"]
  assert {c[0] for c in remote.calls} >= {"exists", "isdir", "listdir", "makedirs", "open"}


def test_a_gs_workdir_of_someone_else_is_refused(remote, tmp_path):
  (tmp_path / "gcs" / "bucket" / "run").mkdir()
  (tmp_path / "gcs" / "bucket" / "run" / "notes.txt").write_text("mine")
  with pytest.raises(ValueError, match="holds no config.json"):
    report.check_workdir(WORKDIR, _config())


class _FakeManager:
  """The part of an orbax CheckpointManager that `checkpoint.save` and `restore_verified` use (orbax writes arrays
  with tensorstore, which would reach the network for gs://)."""

  def __init__(self, directory):
    self.directory, self.saved = epath.Path(directory), {}

  def all_steps(self):
    return sorted(self.saved)

  def save(self, step, args):
    self.saved[step] = jax.tree.map(np.asarray, args.item)

  def wait_until_finished(self):
    pass

  def restore(self, step, args):
    return self.saved[step]


def test_checkpoints_of_a_gs_workdir_stay_remote(remote, tmp_path, monkeypatch):
  directory = checkpoint.checkpoint_dir(WORKDIR)
  assert isinstance(directory, epath.Path) and os.fspath(directory) == f"{WORKDIR}/checkpoints"
  given = []
  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", lambda path, options: given.append(path))
  checkpoint.create_manager(WORKDIR, keep=2)
  assert isinstance(given[0], epath.Path) and os.fspath(given[0]) == f"{WORKDIR}/checkpoints"

  assert checkpoint.latest_step(WORKDIR) is None
  steps = tmp_path / "gcs" / "bucket" / "run" / "checkpoints"
  for name in ("3", "7", "9.orbax-checkpoint-tmp-12"):
    (steps / name).mkdir(parents=True)
  assert checkpoint.latest_step(WORKDIR) == 7

  manager = _FakeManager(directory)
  state = {"w": np.arange(3.0), "mask": None}
  checkpoint.save(manager, 8, state)
  digest = tmp_path / "gcs" / "bucket" / "run" / "checkpoints.sha256" / "8.json"
  assert json.loads(digest.read_text()) == {"step": 8, "sha256": checkpoint.digest(state)}
  assert not [c for c in remote.calls if c[1].endswith(".tmp")], "a remote digest is written directly (no rename)"
  assert checkpoint.restore_verified(manager, 8, state)["w"].tolist() == [0.0, 1.0, 2.0]
  manager.saved[8]["w"] = np.zeros(3)  # a corrupt checkpoint: the digest read back from gs:// catches it
  with pytest.raises(ValueError, match="checkpoint 8 in gs://bucket/run/checkpoints is corrupt"):
    checkpoint.restore_verified(manager, 8, state)


def test_only_process_0_writes_run_files(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: 1)
  assert not report.is_writer()
  report.write_config(str(workdir), _config())
  report.write_results(str(workdir), {"final": None})
  report.write_json(str(workdir / "best.json"), {"step": 1})
  with report.MetricsWriter(str(workdir), resume_step=0) as writer:
    writer.write({"step": 1, "train_loss": 0.5})
  assert report.plot_run(str(workdir), [{"step": 1, "sparsity": 0.5}], {"a": {"sparsity": 0.5}}) == ""
  assert not workdir.exists()

  manager = _FakeManager(workdir / "checkpoints")  # every process saves the checkpoint; process 0 alone the digest
  checkpoint.save(manager, 1, {"w": np.ones(2)})
  assert manager.all_steps() == [1] and not workdir.exists()


def test_only_process_0_writes_run_files_on_gs(remote, tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda *args, **kwargs: 1)
  report.write_config(WORKDIR, _config())
  report.write_results(WORKDIR, {"final": None})
  with report.MetricsWriter(WORKDIR, resume_step=0) as writer:
    writer.write({"step": 1, "train_loss": 0.5})
  checkpoint.save(_FakeManager(checkpoint.checkpoint_dir(WORKDIR)), 1, {"w": np.ones(2)})
  assert os.listdir(tmp_path / "gcs" / "bucket") == []
  assert not [c for c in remote.calls if c[0] in ("open", "makedirs", "mkdir") and c[2] != "r"]


def test_validation_of_a_gs_workdir(remote, tmp_path):
  bucket = tmp_path / "gcs" / "bucket"
  assert validation.check_workdir_path(WORKDIR) == WORKDIR  # missing: created by the run
  (bucket / "run").mkdir()
  assert validation.check_workdir_path(WORKDIR) == WORKDIR
  (bucket / "file").write_text("mine")
  with pytest.raises(validation.ConfigError, match="'gs://bucket/file', which is a file"):
    validation.check_workdir_path("gs://bucket/file")
  with pytest.raises(validation.ConfigError, match="under the file 'gs://bucket/file'"):
    validation.check_workdir_path("gs://bucket/file/run")
  assert (bucket / "file").read_text() == "mine"


def test_validation_of_an_unknown_scheme():
  with pytest.raises(validation.ConfigError, match="'ftp://host/run', whose scheme epath does not know"):
    validation.check_workdir_path("ftp://host/run")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None or importlib.util.find_spec("tensorflow") is not None,
                    reason="gcsfs or tensorflow installed: gs:// would be reached")
def test_validation_names_the_package_gs_needs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(validation.ConfigError, match="gcsfs"):
    validation.check_workdir_path(WORKDIR)
  assert os.listdir(tmp_path) == []


def test_validation_of_a_uri_without_a_bucket():
  with pytest.raises(validation.ConfigError, match="a URI naming a bucket"):
    validation.check_workdir_path("gs://")
