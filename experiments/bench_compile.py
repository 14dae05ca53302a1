"""Time to first step (trace + compile) of a train step with `sparsify` against the plain optimizer's.

  python -m experiments.bench_compile [--models mlp,lenet5,resnet20] [--algorithms gmp,rigl,granet] [--repeats 3]

For each model of the zoo and each algorithm, the same jitted step (loss, grad, optimizer update, apply) is lowered and
compiled from scratch (`jit(...).lower(...).compile()`, so no cache is hit) for optax.sgd with momentum alone and
wrapped in `sparsify`; the ratio of the medians over the repeats is printed. Target (the install-light issue): <= 1.3.
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

INPUTS = {"mlp": (784,), "lenet5": (28, 28, 1), "resnet20": (32, 32, 3)}
PRUNERS = {
    "gmp": {"algorithm": "gmp", "target": 0.9, "end_step": 1000, "update_every": 100},
    "rigl": {"algorithm": "rigl", "target": 0.9, "end_step": 1000, "update_every": 100, "distribution": "erk"},
    "granet": {"algorithm": "granet", "target": 0.9, "end_step": 1000, "update_every": 100, "distribution": "global"},
}


def _step(model, tx, has_bn):
  def step(params, batch_stats, opt_state, x, y):
    def loss(p):
      variables = {"params": p, "batch_stats": batch_stats} if has_bn else {"params": p}
      out = model.apply(variables, x, train=True, mutable=["batch_stats"] if has_bn else False)
      logits = out[0] if has_bn else out
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return step


def compile_seconds(model_name, algorithm, repeats, batch=32):
  model = models.create_model(model_name, 10)
  x = jnp.zeros((batch, *INPUTS[model_name]))
  y = jnp.zeros((batch,), jnp.int32)
  variables = model.init(jax.random.key(0), x[:1], train=False)
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  txs = {"plain": optax.sgd(0.1, momentum=0.9),
         "sparsify": sj.sparsify(optax.sgd(0.1, momentum=0.9), sj.create_pruner(PRUNERS[algorithm]))}
  times = {k: [] for k in txs}
  for _ in range(repeats):
    for name, tx in txs.items():
      opt_state = tx.init(params)
      t = time.perf_counter()
      jax.jit(_step(model, tx, bool(batch_stats))).lower(params, batch_stats, opt_state, x, y).compile()
      times[name].append(time.perf_counter() - t)
  return {k: statistics.median(v) for k, v in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="mlp,lenet5,resnet20")
  parser.add_argument("--algorithms", default="gmp,rigl,granet")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"{'model':10s} {'algorithm':9s} {'plain s':>8s} {'sparsify s':>10s} {'ratio':>6s}")
  for model_name in args.models.split(","):
    for algorithm in args.algorithms.split(","):
      t = compile_seconds(model_name, algorithm, args.repeats)
      print(f"{model_name:10s} {algorithm:9s} {t['plain']:8.2f} {t['sparsify']:10.2f} "
            f"{t['sparsify'] / t['plain']:6.2f}", flush=True)


if __name__ == "__main__":
  main()
