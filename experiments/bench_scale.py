"""Sparse training over device meshes: step time against dense, bytes per device, collectives of a mask update.

  python -m experiments.bench_scale [--widths 4096,4096,1024] [--devices 1,2,4,8] [--steps 5]

An MLP 784-4096-4096-1024-10 (24.2M params) with Adam, batch 64, on 1, 2, 4 and 8 CPU devices (forced with
XLA_FLAGS when this process starts), under three meshes built by `sparsejax.parallel`:
  data        params replicated, batch split;
  fsdp        every param of 2**14 entries or more split over `fsdp` (largest divisible dimension), batch split;
  fsdp+model  fsdp over n/2 devices and a `model` axis of 2: hidden kernels split (fsdp, model) by rules, batch over fsdp.
For each: the median step time of `sparsify(adam, gmp 90%, check="record")` (as the launcher runs it;
`--check raise` for the default) between mask updates ("steady") and at a mask update
("update"), each divided by the plain Adam step on the same mesh (target for steady: <= 1.10); the three steps run
in turn, `--steps` times, so that a load that drifts slows them alike; the bytes that device 0
holds for params + optimizer state (masks and moments included), and that as a fraction of the whole state (target
under fsdp: 1/devices); and the collectives of the compiled sparsify update (what XLA inserted: op, largest element count).
The state is initialised directly sharded (`parallel.state_shardings` as out_shardings), as the engine does.
The devices are host threads sharing this machine's cores: step times measure the program's overhead, not speedup.
glibc serves them all from one heap (`sparsejax.cpu.tune_allocator(arenas=1)`): with a heap per thread, the steps
paid page faults at every step, more of them with sparsify's larger temporaries (fsdp on 4 and 8 devices: 1.28 and
1.30x dense before).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--widths", default="4096,4096,1024")
  ap.add_argument("--devices", default="1,2,4,8")
  ap.add_argument("--steps", type=int, default=9)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--meshes", default="data,fsdp,fsdp+model")
  ap.add_argument("--check", default="record", choices=("record", "raise"),
                  help="sparsify's check: record (the launcher's; no host callback in the step) or raise")
  args = ap.parse_args(argv)
  counts = [int(c) for c in args.devices.split(",")]
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={max(counts)}").strip()
  import jax  # pylint: disable=g-import-not-at-top (after XLA_FLAGS)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top

  import sparsejax as sj  # pylint: disable=g-import-not-at-top
  from sparsejax import cpu, models, parallel, steps  # pylint: disable=g-import-not-at-top
  cpu.tune_allocator(arenas=1)  # one heap for all device threads (see sparsejax.cpu)
  widths = tuple(int(w) for w in args.widths.split(","))
  model = models.create_model("mlp", 10, widths=widths)
  k = jax.random.split(jax.random.key(0), 3)
  x = np.asarray(jax.random.normal(k[0], (args.batch, 784)))
  y = np.asarray(jax.random.randint(k[1], (args.batch,), 0, 10))
  abstract_params = jax.eval_shape(lambda: model.init(k[2], x[:1], train=False)["params"])
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract_params))
  print(f"MLP 784-{'-'.join(map(str, widths))}-10: {n_params / 1e6:.1f}M params, Adam, batch {args.batch}; "
        f"{os.cpu_count()} CPU cores shared by the devices")
  # hidden kernels: inputs over fsdp, hidden units (outputs) over model; the head by the FSDP default
  model_rules = [(f"dense_{i}/kernel", ("fsdp", "model")) for i in range(len(widths))]

  def mesh_for(kind, n):
    if kind == "data":
      return parallel.create_mesh({"data_parallel": n}), []
    if kind == "fsdp":
      return parallel.create_mesh({"fsdp": n}), []
    return parallel.create_mesh({"fsdp": n // 2, "model": 2}), model_rules

  def loss(params, xb, yb):
    logits = model.apply({"params": params}, xb, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def prepare(tx, mesh, rules, update_every):
    """A function that runs one step (blocking), the bytes device 0 holds and the update's HLO."""
    init = lambda: (lambda p: (p, tx.init(p)))(model.init(k[2], x[:1], train=False)["params"])  # noqa: E731
    abstract = jax.eval_shape(init)
    sh = parallel.state_shardings(abstract, mesh, abstract[0], rules)
    with jax.set_mesh(mesh):
      params, state = jax.jit(init, out_shardings=sh)()
      params = sj.apply_masks(params, sj.get_masks(state)) if update_every else params
      params = jax.device_put(params, sh[0])
      batch = parallel.shard_batch({"x": x, "y": y}, mesh)

      def step(params, state, xb, yb):
        grads = jax.grad(loss)(params, xb, yb)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

      bsh = parallel.data_sharding(mesh)
      f = jax.jit(step, in_shardings=(*sh, bsh, bsh), out_shardings=sh, donate_argnums=(0, 1))
      hlo = None
      if update_every:
        update = jax.jit(lambda g, s, p: tx.update(g, s, p), in_shardings=(sh[0], sh[1], sh[0]))
        hlo = update.lower(params, state, params).compile().as_text()
      leaves = jax.tree.leaves((params, state))
      held = sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves) / sum(leaf.nbytes for leaf in leaves)
      held = (held, sum(leaf.addressable_shards[0].data.nbytes for leaf in leaves))
    live = [params, state]

    def once():
      with jax.set_mesh(mesh):
        t = time.perf_counter()
        live[:] = f(live[0], live[1], batch["x"], batch["y"])
        jax.block_until_ready(live[0])
        return time.perf_counter() - t

    once()  # compiles
    return once, held, hlo

  def interleaved(runs):
    """Median seconds of each of `runs` (step functions), called in turn `args.steps` times: a load that drifts
    slows them alike, so their ratios hold better than those of back-to-back medians."""
    times = [[] for _ in runs]
    for _ in range(args.steps):
      for t, run in zip(times, runs):
        t.append(run())
    return [statistics.median(t) for t in times]

  def collectives(hlo):
    found = set()
    for line in hlo.splitlines():
      m = re.search(r"= (.*?) (all-gather|all-to-all|all-reduce|collective-permute|reduce-scatter)(-start)?\(", line)
      if m:
        dims = re.findall(r"\[([\d,]*)\]", m.group(1))
        found.add((m.group(2), max(int(np.prod([int(d) for d in ds.split(",") if d])) for ds in dims)))
    return ", ".join(f"{op}[{n}]" for op, n in sorted(found)) or "none"

  gmp = lambda every: sj.create_pruner({"algorithm": "gmp", "target": 0.9, "begin_step": 0,  # noqa: E731
                                        "end_step": 10**6, "update_every": every})
  print(f"{'mesh':<11} {'dev':>3} {'dense s':>8} {'steady':>7} {'update':>7} {'MB/device':>10} {'of all':>8}  "
        "collectives of the mask update")
  for kind in args.meshes.split(","):
    for n in counts:
      if kind == "fsdp+model" and n < 2:
        continue
      mesh, rules = mesh_for(kind, n)
      dense_run, _, _ = prepare(optax.adam(1e-3), mesh, rules, 0)
      steady_run, held, _ = prepare(sj.sparsify(optax.adam(1e-3), gmp(10**6), check=args.check), mesh, rules, 10**6)
      update_run, _, hlo = prepare(sj.sparsify(optax.adam(1e-3), gmp(1), check=args.check), mesh, rules, 1)
      dense, steady, upd = interleaved([dense_run, steady_run, update_run])
      del dense_run, steady_run, update_run
      print(f"{kind:<11} {n:>3} {dense:>8.3f} {steady / dense:>7.2f} {upd / dense:>7.2f} {held[1] / 2**20:>10.1f} "
            f"{held[0]:>8.3f}  {collectives(hlo)}", flush=True)
  del jnp, NamedSharding, steps
  sys.stdout.flush()


if __name__ == "__main__":
  main()
