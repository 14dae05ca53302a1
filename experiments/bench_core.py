"""Benchmarks of the core library, each a ratio against a baseline run in the same process.

  python -m experiments.bench_core [--repeats 7] [--sizes 1e7,1e8] [--only c] [--modes packed,per_layer]

(a) steady-state train step with `sparsify` / plain optax step: MLP 784-1024-10, batch 128, SGD momentum and Adam.
(b) a whole GMP run (0 -> 90% uniform, an update every 10 steps over steps 0-100, 200 steps) / the same dense run.
(c) exact top-k selection / jnp.argsort on n float32 scores (k = n / 10), and the peak temporary memory XLA reserves
    for each; --modes picks the layouts timed (packed, or per_layer as on sharded arrays; see `select.per_layer`).
    Targets (issue 10, item 8): ratio <= 0.05, under 1 s at 10**8, temporary memory <= 1x the scores.
Measurements are interleaved (baseline, candidate, baseline, ...) and the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import sparsejax as sj


def _mlp_problem(batch=128):
  k = jax.random.split(jax.random.key(0), 4)
  params = {"dense_0": {"kernel": jax.random.normal(k[0], (784, 1024)) * 0.03, "bias": jnp.zeros(1024)},
            "head": {"kernel": jax.random.normal(k[1], (1024, 10)) * 0.03, "bias": jnp.zeros(10)}}
  x = jax.random.normal(k[2], (batch, 784))
  y = jax.random.randint(k[3], (batch,), 0, 10)

  def loss(p):
    h = jax.nn.relu(x @ p["dense_0"]["kernel"] + p["dense_0"]["bias"][None, :])
    logits = h @ p["head"]["kernel"] + p["head"]["bias"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return params, loss


def _step_fn(tx, loss):
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return jax.jit(step, donate_argnums=(0, 1))


def _copy(tree):
  return jax.tree.map(lambda x: None if x is None else jnp.array(x, copy=True), tree, is_leaf=lambda x: x is None)


def _run(step, params, state, n):
  params, state = _copy(params), _copy(state)
  jax.block_until_ready((params, state))
  t = time.perf_counter()
  for _ in range(n):
    params, state = step(params, state)
  jax.block_until_ready((params, state))
  return time.perf_counter() - t


def _interleaved(fns, repeats):
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(fn())
  return {name: statistics.median(v) for name, v in times.items()}


def bench_step(repeats):
  params, loss = _mlp_problem()
  gmp = {"algorithm": "gmp", "target": 0.9, "begin_step": 0, "end_step": 100, "update_every": 10}
  for name, opt in [("sgd+momentum", lambda: optax.sgd(0.01, momentum=0.9)), ("adam", lambda: optax.adam(1e-3))]:
    plain, sparse = opt(), sj.sparsify(opt(), sj.create_pruner(gmp))
    runs = {}
    for label, tx in [("plain", plain), ("sparsify", sparse)]:
      step = _step_fn(tx, loss)
      state = tx.init(params)
      if label == "sparsify":  # steady state: past the pruning schedule, masks at 90%
        state = state._replace(count=jnp.int32(1000))
      _run(step, params, state, 3)
      runs[label] = (lambda step=step, state=state: _run(step, params, state, 100) / 100)
    med = _interleaved(runs, repeats)
    print(f"(a) step {name:13s} plain {med['plain'] * 1e3:7.3f} ms  sparsify {med['sparsify'] * 1e3:7.3f} ms  "
          f"ratio {med['sparsify'] / med['plain']:.3f}  (target <= 1.05)")


def bench_gmp_run(repeats):
  params, loss = _mlp_problem()
  gmp = {"algorithm": "gmp", "target": 0.9, "begin_step": 0, "end_step": 100, "update_every": 10,
         "distribution": "uniform"}
  runs, compile_s = {}, {}
  for label, tx in [("dense", optax.sgd(0.01, momentum=0.9)),
                    ("gmp", sj.sparsify(optax.sgd(0.01, momentum=0.9), sj.create_pruner(gmp)))]:
    step = _step_fn(tx, loss)
    state = tx.init(params)
    t = time.perf_counter()
    _run(step, params, state, 1)
    compile_s[label] = time.perf_counter() - t
    runs[label] = (lambda step=step, state=state: _run(step, params, state, 200))
  med = _interleaved(runs, repeats)
  print(f"(b) 200-step run  dense {med['dense']:.3f} s  gmp {med['gmp']:.3f} s  ratio {med['gmp'] / med['dense']:.3f}"
        f"  (target <= 1.5; first call incl. compile: dense {compile_s['dense']:.2f} s, gmp {compile_s['gmp']:.2f} s)")


def _temp_bytes(fn, *args):
  mem = jax.jit(fn).lower(*args).compile().memory_analysis()
  return getattr(mem, "temp_size_in_bytes", float("nan"))


def bench_select(sizes, repeats, modes=("packed",)):
  for n in sizes:
    x = jax.random.normal(jax.random.key(1), (n,))
    k = jnp.int32(n // 10)
    fns = {mode: (lambda x, k, mode=mode: sj.select.topk_masks([x], [k], mode=mode)[0]) for mode in modes}
    sort = jax.jit(jnp.argsort)
    sort(x).block_until_ready()
    jitted = {mode: jax.jit(f) for mode, f in fns.items()}
    for f in jitted.values():
      f(x, k).block_until_ready()

    def timed(f, *a):
      t = time.perf_counter()
      jax.block_until_ready(f(*a))
      return time.perf_counter() - t

    runs = {"argsort": lambda: timed(sort, x)}
    runs.update({mode: (lambda f=f: timed(f, x, k)) for mode, f in jitted.items()})
    med = _interleaved(runs, repeats)
    mem_sort = _temp_bytes(jnp.argsort, x)
    for mode, f in fns.items():
      mem_ours = _temp_bytes(f, x, k)
      print(f"(c) n={n:.0e} {mode:9s} argsort {med['argsort']:.3f} s  topk {med[mode]:.3f} s  "
            f"ratio {med[mode] / med['argsort']:.3f} (target <= 0.05)  "
            f"temp memory: topk {mem_ours / 2**20:.0f} MiB, argsort {mem_sort / 2**20:.0f} MiB, "
            f"scores {n * 4 / 2**20:.0f} MiB ({mem_ours / (n * 4):.2f}x; target <= 1x)")
    del x


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--sizes", default="1e7,1e8", help="comma-separated score counts for (c)")
  parser.add_argument("--only", default="abc", help="which benchmarks to run, e.g. 'ab'")
  parser.add_argument("--modes", default="packed", help="selection layouts for (c): packed, per_layer or both")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {len(jax.devices())} device(s)")
  if "a" in args.only:
    bench_step(args.repeats)
  if "b" in args.only:
    bench_gmp_run(args.repeats)
  if "c" in args.only:
    bench_select([int(float(s)) for s in args.sizes.split(",")], max(3, args.repeats // 2), args.modes.split(","))


if __name__ == "__main__":
  main()
