"""config.training.tensorboard: TensorBoard event files beside metrics.jsonl holding the same scalars."""
import numpy as np
import pytest

from sparsejax import config_validation, report, tensorboard_events, train
from tiny_dataset import TinyDataset, tiny_config

pytest.importorskip("tensorboardX")


def _from_metrics(records):
  """{tag: [(step, float32 value)]} of metrics.jsonl records, as TensorBoard stores them (float32 simple_value)."""
  out = {}
  for record in records:
    for tag, value in tensorboard_events.scalars(record).items():
      out.setdefault(tag, []).append((record["step"], float(np.float32(value))))
  return dict(sorted(out.items()))


@pytest.mark.slow  # an end-to-end run: ~20 s of compiling on the shared 2-core CPU
def test_a_tiny_run_writes_the_metrics_as_tensorboard_scalars(tmp_path, monkeypatch):
  monkeypatch.setattr(train, "create_dataset", lambda data_config, seed: TinyDataset(seed=seed))
  train.train_and_evaluate(tiny_config(tensorboard=True), str(tmp_path))
  events = tensorboard_events.event_files(tmp_path)
  assert len(events) == 1 and events[0].parent == tmp_path
  records = report.read_metrics(tmp_path)
  scalars = tensorboard_events.read_scalars(tmp_path)
  assert {"train_loss", "test_accuracy", "sparsity"} <= set(scalars)
  assert scalars == _from_metrics(records)


def test_off_by_default_and_resume_rewrites_the_kept_records(tmp_path):
  with report.MetricsWriter(str(tmp_path), resume_step=0) as writer:
    writer.write({"step": 1, "loss": 1.0})
  assert tensorboard_events.event_files(tmp_path) == []
  with report.MetricsWriter(str(tmp_path), resume_step=0, tensorboard=True) as writer:
    for step in (1, 2, 3):
      writer.write({"step": step, "loss": 1.0 / step, "nested": {"a": step}, "note": "text"})
  # A run killed after step 3 with its last checkpoint at step 2 resumes from there: step 3 is dropped from both.
  with report.MetricsWriter(str(tmp_path), resume_step=2, tensorboard=True) as writer:
    writer.write({"step": 3, "loss": 0.3, "nested": {"a": 3}})
  assert len(tensorboard_events.event_files(tmp_path)) == 1
  scalars = tensorboard_events.read_scalars(tmp_path)
  assert scalars == _from_metrics(report.read_metrics(tmp_path))
  assert scalars["loss"] == [(1, 1.0), (2, 0.5), (3, float(np.float32(0.3)))]


def test_asked_for_but_not_installed_is_a_config_error(monkeypatch):
  real = config_validation.importlib.util.find_spec
  monkeypatch.setattr(config_validation.importlib.util, "find_spec",
                      lambda name, *a: None if name == "tensorboardX" else real(name, *a))
  with pytest.raises(ValueError, match=r"config.training.tensorboard: got True; accepted values: .*sparsejax\["):
    config_validation.validate(tiny_config(tensorboard=True))
  config_validation.validate(tiny_config(tensorboard=False))
  with pytest.raises(ValueError, match="config.training.tensorboard: got 'yes'"):
    config_validation.validate(tiny_config(tensorboard="yes"))
