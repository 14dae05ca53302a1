"""The core over sharded params: masks, moments and pruner arrays keep their param's sharding, mask updates move only
histograms and counts between devices, the masks equal the one-device masks exactly, and Auto (GSPMD) and Explicit
meshes both work."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import sparsejax as sj
from sparsejax import select

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices; see tests/conftest.py")

COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "collective-permute", "reduce-scatter", "ragged-all-to-all")


def collectives(hlo: str) -> list[tuple[str, int]]:
  """(op, largest element count among its results) for every collective of a compiled HLO text."""
  out = []
  for line in hlo.splitlines():
    m = re.search(r"= (.*?) (" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if m:
      dims = re.findall(r"\[([\d,]*)\]", m.group(1))
      out.append((m.group(2), max(int(np.prod([int(d) for d in ds.split(",") if d])) for ds in dims)))
  return out


def test_collectives_parser_sees_a_gather():
  """Negative control: the parser does find the all-gather of a param-sized array."""
  mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  x = jax.device_put(jnp.ones((64, 8)), NamedSharding(mesh, P("fsdp")))
  hlo = jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, P())).lower(x).compile().as_text()
  assert ("all-gather", 512) in collectives(hlo)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_per_layer_selection_equals_packed(seed):
  """The two layouts keep exactly the same entries, ties included (small integer scores tie a lot)."""
  rng = np.random.default_rng(seed)
  topk = jax.jit(select.topk_masks_and_counts, static_argnames=("score_fn", "mode"))
  glob = jax.jit(select.global_topk_masks, static_argnames=("weights", "mode"))
  for _ in range(4):  # each case compiles 4 selections: a few shapes, many ties
    shapes = [tuple(rng.integers(1, 6, size=rng.integers(1, 3))) for _ in range(rng.integers(1, 4))]
    xs = [jnp.asarray(rng.integers(-3, 4, size=s).astype(np.float32)) for s in shapes]
    eligible = [jnp.asarray(rng.random(s) < 0.8) for s in shapes]
    ks = [int(rng.integers(0, np.prod(s) + 1)) for s in shapes]
    a = topk(xs, ks, eligible, score_fn=jnp.abs, mode="packed")
    b = topk(xs, ks, eligible, score_fn=jnp.abs, mode="per_layer")
    for x, y in zip(a[0], b[0]):
      np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], b[1])
    weights = tuple(int(w) for w in rng.integers(1, 3, size=len(shapes)))
    k = int(rng.integers(0, 2 * sum(int(np.prod(s)) for s in shapes) + 1))
    for x, y in zip(glob(xs, k, eligible, weights=weights, mode="packed"),
                    glob(xs, k, eligible, weights=weights, mode="per_layer")):
      np.testing.assert_array_equal(x, y)


def _params():
  rng = np.random.default_rng(0)
  return {"d0": {"kernel": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32), "bias": jnp.zeros(32)},
          "d1": {"kernel": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32), "bias": jnp.zeros(16)}}


# Both mesh axes used; no matmul of the test model contracts two sharded dims (Explicit meshes refuse that).
SPECS = {"d0": {"kernel": P("fsdp", None), "bias": P()}, "d1": {"kernel": P("model", "fsdp"), "bias": P("fsdp")}}
ALGORITHMS = {
    "gmp": {"algorithm": "gmp", "target": 0.8, "begin_step": 0, "end_step": 2, "update_every": 1},
    "gmp_global": {"algorithm": "gmp", "target": 0.8, "begin_step": 0, "end_step": 2, "update_every": 1,
                   "distribution": "global"},
    "rigl": {"algorithm": "rigl", "target": 0.8, "begin_step": 0, "end_step": 3, "update_every": 1},
    "set": {"algorithm": "set", "target": 0.8, "begin_step": 0, "end_step": 3, "update_every": 1},
    "granet": {"algorithm": "granet", "target": 0.8, "begin_step": 0, "end_step": 2, "update_every": 1},
    "movement": {"algorithm": "movement", "target": 0.8, "begin_step": 0, "end_step": 2, "update_every": 1},
    "snip": {"algorithm": "snip", "target": 0.8},
    "channel": {"algorithm": "gmp", "target": 0.5, "begin_step": 0, "end_step": 2, "update_every": 1,
                "granularity": "channel"},
}


def _train(cfg, mesh, steps=3):
  """`steps` Adam steps of `cfg` on _params (sharded by SPECS under `mesh`, or on one device); returns the final
  params, state and the compiled update's HLO."""
  tx = sj.sparsify(optax.adam(0.05), sj.create_pruner(cfg))
  params = _params()

  def run():
    p = params if mesh is None else jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), SPECS))
    state = jax.jit(tx.init)(p)
    if cfg["algorithm"] == "snip":
      loss = lambda q, x: jnp.sum(jnp.tanh(x @ q["d0"]["kernel"]) @ q["d1"]["kernel"])  # noqa: E731
      masks = sj.prune_at_init(sj.create_pruner(cfg), None, p, [jnp.ones((8, 64))], loss_fn=loss)
      state = sj.set_masks(state, masks)
    p = sj.apply_masks(p, sj.get_masks(state))

    grad_fn = jax.jit(jax.grad(lambda q: jnp.sum(jnp.tanh(jnp.ones((4, 64)) @ q["d0"]["kernel"] + q["d0"]["bias"][None])
                                                 @ q["d1"]["kernel"])))
    update = jax.jit(tx.update)  # compiled alone: its collectives are the mask update's, not the model's
    hlo = update.lower(grad_fn(p), state, p).compile().as_text()
    for _ in range(steps):
      u, state = update(grad_fn(p), state, p)
      p = optax.apply_updates(p, u)
      jax.block_until_ready(p)  # a queue of sharded steps can deadlock XLA:CPU's all-reduce on 2 cores
    return p, state, hlo

  if mesh is None:
    return run()
  with jax.set_mesh(mesh):
    return run()


# `make test` runs gmp, rigl and channel under both kinds of mesh; the other algorithms run in `make test-slow`.
_FAST = {"gmp", "rigl"}
_CASES = [pytest.param(n, k, marks=() if n in _FAST else pytest.mark.slow, id=f"{n}-{k}")
          for n in sorted(ALGORITHMS) for k in ("auto", "explicit")]


@pytest.mark.parametrize("name,kind", _CASES)
def test_sharded_training_keeps_shardings_and_moves_only_counts(name, kind):
  cfg = ALGORITHMS[name]
  axis = AxisType.Explicit if kind == "explicit" else AxisType.Auto
  mesh = jax.make_mesh((2, 2), ("fsdp", "model"), axis_types=(axis, axis), devices=jax.devices()[:4])
  params, state, hlo = _train(cfg, mesh)
  ref_params, ref_state, _ = _train(cfg, None)
  # Masks are exact: the same on 4 devices as on one.
  for m, r in zip(jax.tree.leaves(sj.get_masks(state)), jax.tree.leaves(sj.get_masks(ref_state))):
    np.testing.assert_array_equal(np.asarray(m), np.asarray(r))
  # Pruned weights are exactly 0.
  zeros_ok = jax.tree.map(lambda m, p: m is None or not np.any(np.asarray(p)[~np.asarray(m)]),
                          sj.get_masks(state), params, is_leaf=lambda x: x is None)
  assert all(jax.tree.leaves(zeros_ok))
  # Mask updates move counts, never a weight, score or mask: no gather, permute or all-to-all, and every all-reduce
  # is of a histogram or a handful of counts (the radix select's 256 bins per layer and pass, the update's own
  # scalars, one count per layer; channel pruning also sums each channel's score over the shards of its inputs, 32
  # values here), against 2048 and 512 weights.
  found = collectives(hlo)
  assert {op for op, _ in found} <= {"all-reduce"}, found
  assert all(n <= 32 or n == 256 for _, n in found), found
  if kind == "explicit":
    # Every mask, moment and per-weight pruner array has exactly its param's sharding.
    by_spec = {jax.tree_util.keystr(k): jax.typeof(x).sharding.spec
               for k, x in jax.tree_util.tree_leaves_with_path(params)}
    for k, x in jax.tree_util.tree_leaves_with_path(state):
      path = jax.tree_util.keystr(k)
      owner = next((s for p, s in by_spec.items() if path.endswith(p)), None)
      if owner is not None and x.ndim == 2:
        assert jax.typeof(x).sharding.spec == owner, path


@pytest.mark.parametrize("check", ["raise", "record"])
def test_a_bad_update_under_a_mesh_raises_instead_of_hanging(check):
  """The zero check's error is raised by every device (a callback on one device would leave the others waiting);
  recorded, it is raised by the host check from a replicated vector."""
  mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner(ALGORITHMS["rigl"]), check=check)
  with jax.set_mesh(mesh):
    params = jax.device_put(_params(), NamedSharding(mesh, P("fsdp")))
    state = jax.jit(tx.init)(params)  # rigl starts sparse: these dense params are wrong
    with pytest.raises(Exception, match="nonzero at pruned weights"):
      _, state = jax.jit(tx.update)(params, state, params)
      assert state.violations.sharding.is_fully_replicated
      sj.check_pruned(state)


def test_sharded_params_are_checked_whole_at_every_step():
  """Sharded layers are zero-checked whole at every step (a cond that checked one step in 32 made the FSDP step
  slower, not faster): a nonzero pruned weight is caught at step 5 as at step 32."""
  from sparsejax import transform  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(AxisType.Auto,), devices=jax.devices()[:4])
  with jax.set_mesh(mesh):
    params = jax.device_put({"w": jnp.ones((64, 64))}, NamedSharding(mesh, P("fsdp")))
    masks = {"w": jnp.arange(64 * 64).reshape(64, 64) % 2 == 0}
    check = jax.jit(lambda p, m, step: transform._raise_in_step(transform._violations(p, m, step, sharded=True), m))
    assert int(check(jax.tree.map(lambda p, m: p * m, params, masks), masks, jnp.int32(5))) == 0
    for step in (5, 32):
      with pytest.raises(Exception, match="nonzero at pruned weights"):
        jax.block_until_ready(check(params, masks, jnp.int32(step)))
