"""Export benchmarks: sizes on disk of `sj.export.save` against dense checkpoints, and BCOO/BCSR inference speed.

  PYTHONPATH=. python -m experiments.bench_export [--part sizes|bcoo|all] [--repeats 7]

sizes: LeNet-300-100 (266,610 params) and the zoo's GPT nano (byte-level, context 256), initialised, then pruned by
  magnitude (`sj.posttrain.prune`, uniform over the prunable kernels) to 50%, 90%, 98% and 2:4, stripped
  (`sj.export.strip`). For each: bytes of the dense params as an .npz (np.savez), the same zip-deflated
  (np.savez_compressed: zeros compress), an orbax checkpoint of the params (StandardCheckpointer, the files of its
  directory), and the packed file (`sj.export.save`, with nm='2:4' for the 2:4 row), plain (compress=False) and
  deflated (the default); ratios to the dense .npz, and of the deflated packed file to orbax's. Every packed file is
  loaded back and compared bit for bit.
bcoo: one Dense layer, y = x @ W (+ nothing), jitted: dense against `sj.export.sparse_dense` as BCOO and as BCSR,
  for a 4096x4096 and a LeNet 784x300 kernel at 90/95/99% (magnitude-pruned random weights), batch 64 and 1. The
  variants run interleaved (dense, bcoo, bcsr, dense, ...) `--repeats` times, each time the median of a few calls;
  printed: the medians of those and the ratios to dense (> 1: slower than dense).
Wall-clock numbers on a shared CPU move from run to run: read the ratios, and run it twice.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import sparsejax as sj
from sparsejax import models

SETTINGS = (("50%", {"target": 0.5}), ("90%", {"target": 0.9}), ("98%", {"target": 0.98}),
            ("2:4", {"target": None, "granularity": "2:4"}))


def _model(name):
  if name == "lenet300":
    model, x = models.create_model("lenet300", 10), jnp.zeros((1, 28, 28, 1))
  else:
    model, x = models.create_model("gpt", 257, size="nano", context=256), jnp.zeros((1, 256), jnp.int32)
  return model, jax.jit(model.init)(jax.random.key(0), x)["params"]


def _dir_bytes(path):
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _orbax_bytes(params, folder):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top (the engine extra)
  path = os.path.join(folder, "orbax")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, params)
  checkpointer.wait_until_finished()
  return _dir_bytes(path)


def _exact(restored, params):
  flat = dict(sj.masks.flatten_with_paths(restored))
  return all(flat[p].dtype == np.asarray(x).dtype and np.array_equal(flat[p], np.asarray(x))
             for p, x in sj.masks.flatten_with_paths(params))


def sizes() -> None:
  print("sizes on disk (bytes; x = ratio to the dense .npz)")
  header = (f"{'model':9} {'pruned':6} {'sparsity':>8} {'dense.npz':>10} {'deflated':>16} {'orbax':>16} "
            f"{'packed':>16} {'packed+deflate':>16} {'/orbax':>6}  exact")
  print(header)
  for name in ("lenet300", "gpt_nano"):
    model, params = _model(name)
    for label, options in SETTINGS:
      result = sj.posttrain.prune(model, params, [], method="magnitude", **options)
      stripped = jax.tree.map(np.asarray, sj.export.strip(result.params, result.masks))
      nm = options.get("granularity")
      with tempfile.TemporaryDirectory() as folder:
        flat = {p: x for p, x in sj.masks.flatten_with_paths(stripped)}
        np.savez(os.path.join(folder, "dense.npz"), **flat)
        np.savez_compressed(os.path.join(folder, "deflated.npz"), **flat)
        sj.export.save(os.path.join(folder, "packed.npz"), stripped, result.masks, nm=nm, compress=False)
        sj.export.save(os.path.join(folder, "packed_z.npz"), stripped, result.masks, nm=nm, compress=True)
        got = {k: os.path.getsize(os.path.join(folder, f"{k}.npz"))
               for k in ("dense", "deflated", "packed", "packed_z")}
        got["orbax"] = _orbax_bytes(stripped, folder)
        exact = _exact(sj.export.load(os.path.join(folder, "packed.npz")), stripped) and _exact(
            sj.export.load(os.path.join(folder, "packed_z.npz")), stripped)
      sparsity = float(sj.masks.sparsity(result.masks))
      cell = lambda k: f"{got[k]:>9,} {got[k] / got['dense']:5.3f}x"  # noqa: E731
      print(f"{name:9} {label:6} {sparsity:8.4f} {got['dense']:>10,} {cell('deflated'):>16} {cell('orbax'):>16} "
            f"{cell('packed'):>16} {cell('packed_z'):>16} {got['packed_z'] / got['orbax']:6.3f}  "
            f"{'yes' if exact else 'NO'}")


def _time(fn, args, calls):
  fn(*args).block_until_ready()
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    fn(*args).block_until_ready()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bcoo(repeats: int) -> None:
  print(f"\nDense layer y = x @ W, jitted, on {jax.devices()[0].platform} ({os.cpu_count()} CPUs visible); median of "
        f"{repeats} interleaved repeats (each the median of 3 calls); ratio = time / dense time")
  print(f"{'kernel':>10} {'sparsity':>8} {'batch':>5} {'dense ms':>9} {'bcoo ms':>9} {'bcsr ms':>9} {'bcoo/dense':>10} "
        f"{'bcsr/dense':>10}")
  apply_dense = jax.jit(lambda w, x: x @ w)
  apply_sparse = jax.jit(lambda layer, x: layer(x))
  rng = np.random.default_rng(0)
  for shape in ((4096, 4096), (784, 300)):
    weights = rng.standard_normal(shape).astype(np.float32)
    for sparsity in (0.9, 0.95, 0.99):
      kernel = np.where(np.abs(weights) >= np.quantile(np.abs(weights), sparsity), weights, 0).astype(np.float32)
      layers = {"dense": jnp.asarray(kernel), "bcoo": sj.export.sparse_dense(kernel, format="bcoo"),
                "bcsr": sj.export.sparse_dense(kernel, format="bcsr")}
      for batch in (64, 1):
        x = jnp.asarray(rng.standard_normal((batch, shape[0])).astype(np.float32))
        ref = np.asarray(x) @ kernel
        for k, layer in layers.items():
          y = apply_dense(layer, x) if k == "dense" else apply_sparse(layer, x)
          assert np.allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-3), k
        runs = {k: [] for k in layers}
        for _ in range(repeats):
          for k, layer in layers.items():
            runs[k].append(_time(apply_dense if k == "dense" else apply_sparse, (layer, x), 3))
        ms = {k: statistics.median(v) * 1e3 for k, v in runs.items()}
        print(f"{'x'.join(map(str, shape)):>10} {sparsity:8.2f} {batch:5d} {ms['dense']:9.3f} {ms['bcoo']:9.3f} "
              f"{ms['bcsr']:9.3f} {ms['bcoo'] / ms['dense']:10.2f} {ms['bcsr'] / ms['dense']:10.2f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--part", choices=("sizes", "bcoo", "all"), default="all")
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  sj.tune_cpu_allocator()
  if args.part in ("sizes", "all"):
    sizes()
  if args.part in ("bcoo", "all"):
    bcoo(args.repeats)


if __name__ == "__main__":
  main()
