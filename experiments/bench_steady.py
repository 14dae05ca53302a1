"""Steady-state step between mask updates: `sparsify` against the dense step and a post-update masking baseline.

  python -m experiments.bench_steady [--models mlp1024,mlp4096,resnet20] [--repeats 10] [--steps 100]

Three jitted train steps (loss, grad, optimizer update, apply, buffers donated) on the same model and batch:
  dense     the plain optax optimizer;
  baseline  the plain optimizer, then the params multiplied by fixed 90% masks after the update (what jaxpruner does:
            post-update masking; its optimizer state of pruned weights keeps moving);
  sparsify  `sj.sparsify(tx, gmp)` past its schedule (no mask update runs) with the same 90% masks installed;
  record    the same with `check="record"` (what the launcher runs: no host callback in the step, see `sparsify`).
For SGD with momentum and Adam. The four run interleaved (dense, baseline, sparsify, record, dense, ...) `--repeats`
times, `--steps` steps each (a twentieth of that for ResNet-20, whose step is ~40x an MLP's; windows of 20 MLP
steps, ~0.1 s, moved ratios by 5-10% between runs), in one process; the medians are printed with the ratios. Targets (the install-light
issue): sparsify <= 1.02x dense, and never slower than the baseline. Wall-clock ratios on a shared CPU move by a few
percent from run to run: read them next to the baseline's, which pays for the same masking.

On CPU, run it both ways (`--malloc tuned`, the default, and `--malloc default`): with glibc's default settings a
step whose temporary buffers pass 32 MiB pays page faults at every step, and the mask-update code of a sparsify step
enlarges them (see `sparsejax.cpu`).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import sparsejax as sj
from sparsejax import models

GMP = {"algorithm": "gmp", "target": 0.9, "begin_step": 0, "end_step": 10, "update_every": 5}


def _problem(name, batch):
  """(params, extra variables, loss(params, extra) -> (loss, new extra))."""
  k = jax.random.split(jax.random.key(0), 3)
  if name.startswith("mlp"):
    model = models.create_model("mlp", 10, widths=(int(name[3:]),))
    x = jax.random.normal(k[0], (batch, 784))
  else:
    model = models.create_model(name, 10)
    x = jax.random.normal(k[0], (batch, 32, 32, 3))
  y = jax.random.randint(k[1], (batch,), 0, 10)
  variables = model.init(k[2], x[:1], train=False)
  params = variables["params"]
  extra = {key: v for key, v in variables.items() if key != "params"}

  def loss(p, extra):
    if extra:
      logits, new = model.apply({"params": p, **extra}, x, train=True, mutable=list(extra))
    else:
      logits, new = model.apply({"params": p}, x, train=True), {}
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

  return params, extra, loss


def _steps(tx, loss, masks=None):
  def step(params, extra, state):
    grads, extra = jax.grad(loss, has_aux=True)(params, extra)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if masks is not None:  # post-update masking
      params = sj.apply_masks(params, masks)
    return params, extra, state
  return jax.jit(step, donate_argnums=(0, 1, 2))


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def _timed(step, params, extra, state, n):
  params, extra, state = _copy(params), _copy(extra), _copy(state)
  jax.block_until_ready((params, extra, state))
  t = time.perf_counter()
  for _ in range(n):
    params, extra, state = step(params, extra, state)
  jax.block_until_ready((params, extra, state))
  return (time.perf_counter() - t) / n


def bench(name, opt_name, make_opt, repeats, steps, batch):
  params, extra, loss = _problem(name, batch)
  pruner = sj.create_pruner(GMP)
  sparse_tx = sj.sparsify(make_opt(), pruner)
  record_tx = sj.sparsify(make_opt(), pruner, check="record")
  state = sparse_tx.init(params)
  # 90% masks (magnitude, uniform) installed as a finished schedule leaves them; the step count is past end_step.
  masks = jax.jit(lambda p: pruner.update(p, p, pruner.init(p), jnp.int32(GMP["end_step"])).masks)(params)
  # (pending cleared: set_masks' reset ran long ago; each window restarts from this state)
  state = sj.set_masks(state, masks)._replace(count=jnp.int32(10 * GMP["end_step"]), pending=jnp.zeros((), bool))
  sparse_params = sj.apply_masks(params, masks)
  dense_tx = make_opt()
  runs = {
      "dense": (_steps(dense_tx, loss), params, dense_tx.init(params)),
      "baseline": (_steps(dense_tx, loss, masks), sparse_params, dense_tx.init(sparse_params)),
      "sparsify": (_steps(sparse_tx, loss), sparse_params, state),
      "record": (_steps(record_tx, loss), sparse_params, state),
  }
  for step, p, s in runs.values():
    _timed(step, p, extra, s, 2)  # compile and warm up
  times = {k: [] for k in runs}
  for i in range(repeats):
    for label in (list(runs) if i % 2 == 0 else list(runs)[::-1]):  # the order reversed every other repeat
      step, p, s = runs[label]
      times[label].append(_timed(step, p, extra, s, steps))
  med = {k: statistics.median(v) for k, v in times.items()}
  # Ratios are medians of per-repeat ratios (each arm against the dense window of the same repeat): the machine's
  # speed drifts over seconds, and pairing cancels what a ratio of overall medians keeps.
  ratio = {k: statistics.median(t / d for t, d in zip(v, times["dense"])) for k, v in times.items()}
  print(f"{name:9s} {opt_name:13s} dense {med['dense'] * 1e3:8.3f} ms  baseline {med['baseline'] * 1e3:8.3f} ms  "
        f"sparsify {med['sparsify'] * 1e3:8.3f} ms  | sparsify/dense {ratio['sparsify']:.3f}  "
        f"record/dense {ratio['record']:.3f}  baseline/dense {ratio['baseline']:.3f}  "
        f"record/baseline {statistics.median(r / b for r, b in zip(times['record'], times['baseline'])):.3f}",
        flush=True)
  return med


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="mlp1024,mlp4096,resnet20")
  parser.add_argument("--optimizers", default="momentum,adam")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                      help="tuned: sj.tune_cpu_allocator() first, as the launcher does; default: glibc's settings")
  args = parser.parse_args()
  if args.malloc == "tuned":
    print(f"sj.tune_cpu_allocator(): {sj.tune_cpu_allocator()}")
  opts = {"momentum": ("sgd+momentum", lambda: optax.sgd(0.01, momentum=0.9)),
          "adam": ("adam", lambda: optax.adam(1e-3))}
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; median of {args.repeats} interleaved repeats")
  for name in args.models.split(","):
    for opt in args.optimizers.split(","):
      label, make = opts[opt]
      steps = args.steps if name.startswith("mlp") else max(args.steps // 20, 2)  # a ResNet-20 step is ~40x an MLP one
      bench(name, label, make, args.repeats, steps, 128 if name.startswith("mlp") else 32)


if __name__ == "__main__":
  main()
