"""The dense optimizer and learning-rate schedule named by `config.training`, built in one place (as in big_vision).

`sparsejax.train.build` wraps the result with `sparsejax.sparsify`, so any optimizer here prunes the same way.

>>> import ml_collections
>>> from sparsejax import config_validation
>>> training = config_validation.validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"},
...     "training": {"num_steps": 100, "lr_schedule": "step", "lr_boundaries": [0.5]}}).training
>>> schedule = make_lr_schedule(training, 100)
>>> [round(float(schedule(t)), 4) for t in (0, 49, 50, 99)]
[0.1, 0.1, 0.01, 0.01]
"""
from __future__ import annotations

import optax


def make_lr_schedule(training, num_steps: int) -> optax.Schedule:
  """Learning rate against the optimizer step.

  "constant"; "step": multiply by `lr_decay_factor` at each of `lr_boundaries` (fractions of training);
  "cosine" / "warmup_cosine": cosine decay to 0 at the end of training (Loshchilov & Hutter 2017, SGDR). A positive
  `warmup_steps` adds a linear warmup from 0 (Goyal et al. 2017) in front of any of them; the decay then covers the
  remaining steps while step boundaries stay where the fractions put them.

  Steps past `num_steps` are only reached by fine-tuning after training (IMP with rewind 'finetune'): they train at
  the schedule's last rate, and for the cosine schedules, whose last rate is 0, at `learning_rate *
  lr_decay_factor` (0.1 of the peak by default), so fine-tuning trains rather than standing still.

  Args:
    training: `config.training` after `config_validation.validate`.
    num_steps: total training steps (`config_validation.num_train_steps`).
  """
  lr, warmup = float(training.learning_rate), int(training.warmup_steps)
  kind = training.lr_schedule
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "step":
    scales = {}
    for fraction in training.lr_boundaries:
      # Boundaries are absolute fractions of training; the joined schedule sees steps counted from the warmup's end.
      boundary = max(round(fraction * num_steps) - warmup, 0)
      scales[boundary] = scales.get(boundary, 1.0) * float(training.lr_decay_factor)
    main = optax.piecewise_constant_schedule(lr, scales)
  elif kind in ("cosine", "warmup_cosine"):
    main = optax.cosine_decay_schedule(lr, max(num_steps - warmup, 1))
  else:
    raise ValueError(f"config.training.lr_schedule: got {kind!r}; accepted values: constant, step, cosine, "
                     "warmup_cosine")
  schedule = main if warmup == 0 else optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  finetune = lr * float(training.lr_decay_factor) if kind in ("cosine", "warmup_cosine") else float(
      schedule(num_steps - 1))
  return optax.join_schedules([schedule, optax.constant_schedule(finetune)], [num_steps])


def make_optimizer(training, num_steps: int) -> optax.GradientTransformation:
  """The dense optax optimizer of `config.training` (not yet sparsified).

  "adamw" decays weights decoupled from the gradient (Loshchilov & Hutter 2019); for the others a positive
  `weight_decay` adds the L2 gradient `weight_decay * w` before the optimizer, which is what SGD papers (ResNet, LTH)
  call weight decay.
  """
  schedule = make_lr_schedule(training, num_steps)
  name, momentum, wd = training.optimizer, float(training.momentum), float(training.weight_decay)
  if name == "adamw":
    return optax.adamw(schedule, weight_decay=wd)
  if name == "sgd":
    base = optax.sgd(schedule)
  elif name in ("momentum", "nesterov"):
    base = optax.sgd(schedule, momentum=momentum, nesterov=name == "nesterov")
  elif name == "adam":
    base = optax.adam(schedule)
  else:
    raise ValueError(f"config.training.optimizer: got {name!r}; accepted values: sgd, momentum, nesterov, adam, adamw")
  return base if wd == 0 else optax.chain(optax.add_decayed_weights(wd), base)
