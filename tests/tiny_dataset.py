"""A tiny in-memory dataset with the `sparsejax.data` Dataset interface, for fast end-to-end tests of the train loop.

Labels are a fixed linear function of the inputs, so a few steps of training already beat chance.
"""
import numpy as np


class TinyDataset:
  """`num_train` train and `num_test` test examples of `input_shape`, 10 classes; batches depend only on the step."""

  def __init__(self, input_shape=(40,), num_train=64, num_test=20, seed=0, name="tiny"):
    rs = np.random.RandomState(1234)
    n = num_train + num_test
    self.name, self.input_shape, self.num_classes, self.seed = name, tuple(input_shape), 10, seed
    self.num_train, self.splits = num_train, ("train", "test")
    self.x = rs.randn(n, *self.input_shape).astype(np.float32)
    w = rs.randn(int(np.prod(self.input_shape)), self.num_classes)
    self.y = np.argmax(self.x.reshape(n, -1) @ w, axis=1).astype(np.int32)

  def train_batch(self, step, batch_size, rows=slice(None)):
    epoch = step * batch_size // self.num_train
    perm = np.random.RandomState([self.seed, epoch]).permutation(self.num_train)
    start = step * batch_size % self.num_train
    idx = perm[np.arange(start, start + batch_size) % self.num_train]
    return {"image": self.x[idx][rows], "label": self.y[idx][rows]}

  def eval_batches(self, split, batch_size, rows=slice(None)):
    assert split == "test", split
    x, y = self.x[self.num_train:], self.y[self.num_train:]
    for i in range(0, len(x), batch_size):
      xb, yb = x[i:i + batch_size], y[i:i + batch_size]
      pad = batch_size - len(xb)
      batch = {"image": np.concatenate([xb, np.zeros((pad, *self.input_shape), np.float32)]),
               "label": np.concatenate([yb, np.zeros(pad, np.int32)]),
               "mask": np.arange(batch_size) < len(xb)}
      yield {k: v[rows] for k, v in batch.items()}


def tiny_config(model="mlp", steps=6, **training):
  """A config dict for `train_and_evaluate` on TinyDataset: GMP to 50% over the first steps, mask updated every step."""
  return {
      "seed": 0,
      "model": {"name": model},
      "data": {"name": "tiny"},
      "training": {"num_steps": steps, "batch_size": 8, "eval_batch_size": 8, "optimizer": "momentum",
                   "learning_rate": 0.05, "log_every": 2, "eval_every": 3, "checkpoint_every": 3, "progress": "none",
                   **training},
      "sparsity": {"algorithm": "gmp", "target": 0.5, "begin_step": 0, "end_step": max(steps - 2, 1),
                   "update_every": 1},
  }
