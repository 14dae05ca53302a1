"""sparsejax.tickets, the IMP library calls: level masks against a numpy reference, rewinding, the controls."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sparsejax as sj


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"dense_0": {"kernel": jax.random.normal(k[0], (12, 10)), "bias": jnp.zeros(10)},
          "head": {"kernel": jax.random.normal(k[1], (10, 4)) * 1e-3, "bias": jnp.zeros(4)}}


def _top(scores, eligible, k):
  """numpy reference: the k largest scores among the eligible entries (no ties in these weights)."""
  out = np.zeros(scores.size, bool)
  order = [i for i in np.argsort(-scores.ravel(), kind="stable") if eligible.ravel()[i]]
  out[order[:k]] = True
  return out.reshape(scores.shape)


def test_per_layer_levels_match_the_reference():
  params = _params()
  w = {p: np.abs(np.asarray(x)) for p, x in sj.masks.flatten_with_paths(params) if x.ndim == 2}
  masks = sj.create_masks(params)
  ref = {p: np.ones(x.shape, bool) for p, x in w.items()}
  for _ in range(3):
    masks = sj.tickets.next_masks(params, masks, 0.3, overrides={"head": 0.1})
    for p in ref:
      ref[p] = _top(w[p], ref[p], round((1 - (0.1 if p.startswith("head") else 0.3)) * int(ref[p].sum())))
    got = dict(sj.masks.flatten_with_paths(masks))
    for p in ref:
      np.testing.assert_array_equal(np.asarray(got[p]), ref[p], err_msg=p)
  assert masks["dense_0"]["bias"] is None


def test_global_levels_match_the_reference_with_the_floor():
  params = _params()
  w = [np.abs(np.asarray(params[n]["kernel"])) for n in ("dense_0", "head")]
  masks = sj.create_masks(params)
  ref = [np.ones(x.shape, bool) for x in w]
  for _ in range(2):
    masks = sj.tickets.next_masks(params, masks, 0.5, distribution="global", min_density=0.25)
    keep = round(0.5 * sum(int(r.sum()) for r in ref))
    floors = [_top(x, r, int(np.ceil(0.25 * x.size))) for x, r in zip(w, ref)]
    rest = _top(np.concatenate([x.ravel() for x in w]), np.concatenate([(r & ~f).ravel() for r, f in zip(ref, floors)]),
                keep - sum(int(f.sum()) for f in floors))
    ref = [f | r.reshape(x.shape) for f, r, x in zip(floors, np.split(rest, [w[0].size]), w)]
    np.testing.assert_array_equal(np.asarray(masks["dense_0"]["kernel"]), ref[0])
    np.testing.assert_array_equal(np.asarray(masks["head"]["kernel"]), ref[1])
  assert int(masks["head"]["kernel"].sum()) == 10  # the floor: a global threshold alone would empty the head


@pytest.mark.parametrize("kwargs, field", [({"prune_fraction": 1.0}, "prune_fraction"),
                                           ({"distribution": "erk"}, "distribution"),
                                           ({"min_density": -0.1}, "min_density"),
                                           ({"overrides": {"head": 0.0}}, "overrides"),
                                           ({"overrides": {"head": 0.1}, "distribution": "global"}, "overrides")])
def test_bad_arguments_are_named(kwargs, field):
  params = _params()
  with pytest.raises(ValueError, match=field):
    sj.tickets.next_masks(params, sj.create_masks(params), **kwargs)


def test_rewind_installs_the_masks_and_the_controls_are_reproducible():
  params = _params()
  masks = sj.tickets.next_masks(params, sj.create_masks(params), 0.5)
  tx = sj.sparsify(optax.sgd(0.1), sj.create_pruner({"algorithm": "imp"}))
  start, opt_state = sj.tickets.rewind(params, tx.init(params), masks)
  k = np.asarray(start["dense_0"]["kernel"])
  np.testing.assert_array_equal(k, np.where(np.asarray(masks["dense_0"]["kernel"]), params["dense_0"]["kernel"], 0))
  assert int(sj.get_masks(opt_state)["head"]["kernel"].sum()) == 20 and bool(opt_state.pending)  # installed

  rand = sj.tickets.random_mask(masks, seed=3, level=1)
  again = sj.tickets.random_mask(masks, seed=3, level=1)
  other = sj.tickets.random_mask(masks, seed=3, level=2)
  for a, b, c, m in zip(*(sj.masks.mask_leaves(t) for t in (rand, again, other, masks))):
    assert int(a.sum()) == int(m.sum()) and bool((a == b).all()) and bool((a != c).any())
  keys = []
  fresh = sj.tickets.random_reinit(lambda key: keys.append(key) or _params(), masks, seed=3, level=1)
  assert np.array_equal(jax.random.key_data(keys[0]), jax.random.key_data(
      sj.tickets.control_key(3, sj.tickets.RANDOM_REINIT_STREAM, 1)))
  assert sj.summary(masks, fresh)["total"]["nnz"] == sj.summary(masks)["total"]["nnz"]
  host = sj.tickets.snapshot((start, opt_state))
  assert isinstance(host[0]["dense_0"]["kernel"], np.ndarray)
