"""Lottery tickets: IMP level counts, rewinding, controls, one compile for all levels, resume inside a level."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsejax as sj
from configs import mnist1d_mlp_lth
from sparsejax import lottery, steps
from sparsejax import train as train_lib


def _params():
  k = jax.random.split(jax.random.key(0), 3)
  return {"dense_0": {"kernel": jax.random.normal(k[0], (40, 30)), "bias": jnp.zeros(30)},
          "dense_1": {"kernel": jax.random.normal(k[1], (30, 30)), "bias": jnp.zeros(30)},
          "head": {"kernel": jax.random.normal(k[2], (30, 10)), "bias": jnp.zeros(10)}}


def _cfg(**kw):
  return sj.config.validate({"algorithm": "imp", "levels": 5, **kw}, tuple(sj.REGISTRY))


def test_density_after_levels_is_the_chain_of_exact_counts():
  params = _params()
  masks = sj.create_masks(params)
  cfg = _cfg(prune_fraction=0.2, prune_fraction_overrides={"head": 0.1})
  counts = {"dense_0/kernel": 1200, "dense_1/kernel": 900, "head/kernel": 300}
  for level in range(1, 6):
    masks = jax.jit(lottery.next_masks, static_argnums=2)(params, masks, lottery._Frozen(cfg))
    params = sj.apply_masks(params, masks)
    layers = sj.summary(masks, params)["layers"]
    for path in counts:
      p = 0.1 if path == "head/kernel" else 0.2
      counts[path] = round((1 - p) * counts[path])
      assert layers[path]["nnz"] == counts[path], (level, path)
    # the (1-p)^L law, up to the rounding of each level
    assert layers["dense_1/kernel"]["nnz"] / 900 == pytest.approx(0.8 ** level, abs=level / 900)
  # magnitude: every kept weight is at least as large as every weight pruned at this level
  w = np.abs(np.asarray(_params()["dense_0"]["kernel"]))
  m = np.asarray(masks["dense_0"]["kernel"])
  assert w[m].min() >= w[~m].max()


def test_global_levels_keep_the_floor():
  params = _params()
  params["head"]["kernel"] = params["head"]["kernel"] * 1e-3  # global magnitude would empty this layer
  masks = sj.create_masks(params)
  cfg = _cfg(distribution="global", prune_fraction=0.5, min_density=0.05)
  total = 2400
  for _ in range(4):
    masks = lottery.next_masks(params, masks, cfg)
    total = round(0.5 * total)
    s = sj.summary(masks)
    assert s["total"]["nnz"] == total
    assert s["layers"]["head/kernel"]["nnz"] >= int(np.ceil(0.05 * 300))


def test_random_masks_keep_per_layer_counts():
  params = _params()
  masks = lottery.next_masks(params, sj.create_masks(params), _cfg(prune_fraction=0.7))
  rand = lottery.random_masks_like(masks, jax.random.key(3))
  for a, b in zip(sj.masks.mask_leaves(masks), sj.masks.mask_leaves(rand)):
    assert int(a.sum()) == int(b.sum()) and bool((a != b).any())


def _tiny_lottery_config(levels=2, rewind="step", control="both", steps=24):
  config = mnist1d_mlp_lth.get_config()
  config.model.name = "mlp"
  config.model.widths = (32,)
  config.training.num_steps = steps
  config.training.eval_every = 8
  config.training.log_every = 8
  config.training.checkpoint_every = 6
  config.training.keep_checkpoints = 2
  config.training.progress = "none"
  config.training.learning_rate = 1e-2
  config.sparsity.levels = levels
  config.sparsity.rewind = rewind
  config.sparsity.rewind_step = 5
  config.sparsity.control = control
  return config


@pytest.mark.slow
def test_rewind_and_controls_differ_only_as_intended(tmp_path):
  setup = train_lib.build(_tiny_lottery_config())
  lot = lottery.Lottery(setup, str(tmp_path))
  start_state = lot._on_devices(lot.initial)
  masks = lottery.next_masks(start_state.params, sj.get_masks(start_state.opt_state), lot.cfg)
  masks = jax.device_get(masks)
  # the snapshot at the rewind step: level 0 trains past it and saves it
  state = lot._train(0, "ticket", start_state, 0, 24)[0]
  snap = lot.snapshot
  assert int(snap.step) == 5
  ticket, start, end = lot._start(1, "ticket", masks, state)
  assert (start, end) == (5, 24) and int(ticket.step) == 5
  flat = lambda t: dict(sj.masks.flatten_with_paths(t))  # noqa: E731
  for path, m in sj.masks.flatten_with_paths(masks, is_leaf=sj.masks.is_none):
    p, s = np.asarray(flat(ticket.params)[path]), np.asarray(flat(snap.params)[path])
    if m is None:
      np.testing.assert_array_equal(p, s)
    else:  # survivors exactly their snapshot values, the rest exactly 0
      np.testing.assert_array_equal(p, np.where(m, s, 0.0))
  rand, _, _ = lot._start(1, "random_mask", masks, state)
  reinit, _, _ = lot._start(1, "random_reinit", masks, state)
  tm, rm, im = (sj.masks.mask_leaves(sj.get_masks(x.opt_state)) for x in (ticket, rand, reinit))
  for a, b, c in zip(tm, rm, im):
    assert int(a.sum()) == int(b.sum()) and bool((a != b).any())  # random_mask: same counts, other places
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))     # random_reinit: the same masks
  np.testing.assert_array_equal(np.asarray(rand.params["dense_0"]["bias"]), np.asarray(ticket.params["dense_0"]["bias"]))
  k_r, k_t = np.asarray(reinit.params["dense_0"]["kernel"]), np.asarray(ticket.params["dense_0"]["kernel"])
  assert not np.array_equal(k_r, k_t) and np.all(k_r[~np.asarray(tm[0])] == 0)
  # everything but params and masks is the snapshot's: optimizer moments, step, rng
  np.testing.assert_array_equal(np.asarray(rand.rng), np.asarray(snap.rng))


@pytest.mark.slow
def test_all_levels_one_compile_and_resume_inside_a_level(tmp_path, monkeypatch):
  config = _tiny_lottery_config(levels=2, rewind="step", control="random_mask")
  before = steps.TRACES["train_step"]
  full = lottery.run_lottery(config, str(tmp_path / "full"))
  assert steps.TRACES["train_step"] - before == 1
  assert [lv["level"] for lv in full["levels"]] == [0, 1, 2]
  assert [round(lv["sparsity"], 3) for lv in full["levels"]] == [0.0, 0.2, 0.36]
  assert set(full["levels"][1]["controls"]) == {"random_mask"}
  assert os.path.exists(tmp_path / "full" / "lottery.png")

  # kill inside level 1 (after its step-12 checkpoint), then resume
  real_loop = train_lib.train_loop
  calls = {"n": 0}

  def dying_loop(state, step_fn, dataset, batch_size, mesh, start, end, hooks=()):
    calls["n"] += 1
    if calls["n"] == 2:  # level 1 ticket
      real_loop(state, step_fn, dataset, batch_size, mesh, start, 13, hooks)
      raise KeyboardInterrupt("killed")
    return real_loop(state, step_fn, dataset, batch_size, mesh, start, end, hooks)

  monkeypatch.setattr(train_lib, "train_loop", dying_loop)
  with pytest.raises(KeyboardInterrupt):
    lottery.run_lottery(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(train_lib, "train_loop", real_loop)
  assert os.path.exists(tmp_path / "resumed" / "levels" / "01_ticket" / "checkpoints" / "12")
  resumed = lottery.run_lottery(config, str(tmp_path / "resumed"))
  strip = lambda r: [{k: v for k, v in lv.items() if k != "wall_seconds"} for lv in r["levels"]]  # noqa: E731
  assert strip(resumed) == strip(full)
  assert resumed["final"]["test_accuracy"] == full["final"]["test_accuracy"]
  # a finished experiment is not redone
  before = steps.TRACES["train_step"]
  assert lottery.run_lottery(config, str(tmp_path / "resumed"))["levels"] == resumed["levels"]
  assert steps.TRACES["train_step"] == before
  with open(tmp_path / "resumed" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert {(r["level"], r["run"]) for r in records} == {(0, "ticket"), (1, "ticket"), (1, "random_mask"),
                                                        (2, "ticket"), (2, "random_mask")}


@pytest.mark.parametrize("rewind", ["init", pytest.param("lr", marks=pytest.mark.slow),
                                    pytest.param("finetune", marks=pytest.mark.slow)])
def test_other_rewinds_run(tmp_path, rewind):
  config = _tiny_lottery_config(levels=1, rewind=rewind, control="none", steps=12)
  results = lottery.run_lottery(config, str(tmp_path))
  assert results["levels"][1]["sparsity"] == pytest.approx(0.2, abs=1e-3)
  expected_final_step = {"init": 12, "lr": 12, "finetune": 2 * 12 - 5}[rewind]
  assert results["final"]["step"] == expected_final_step


def test_bad_lottery_config_fails_before_writing(tmp_path):
  config = _tiny_lottery_config()
  config.sparsity.rewind_step = 999
  with pytest.raises(ValueError, match="rewind_step"):
    lottery.run_lottery(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow
def test_more_levels_extend_a_finished_run(tmp_path):
  config = _tiny_lottery_config(levels=1, rewind="init", control="none", steps=12)
  first = lottery.run_lottery(config, str(tmp_path))
  done = tmp_path / "levels" / "01_ticket" / "result.json"
  stamp = os.stat(done).st_mtime_ns
  config.sparsity.levels = 2
  more = lottery.run_lottery(config, str(tmp_path))
  assert os.stat(done).st_mtime_ns == stamp  # level 1 was read back, not trained again
  assert more["levels"][:2] == first["levels"]
  assert [round(lv["sparsity"], 3) for lv in more["levels"]] == [0.0, 0.2, 0.36]
  config.sparsity.prune_fraction = 0.5  # anything else that changes the run is still refused
  with pytest.raises(ValueError, match="prune_fraction"):
    lottery.run_lottery(config, str(tmp_path))


@pytest.mark.parametrize("control", ["random_reinit", pytest.param("random_mask", marks=pytest.mark.slow)])
def test_finetune_with_a_control_runs(tmp_path, control):
  """Fine-tuning starts the ticket and the control from the same previous level; neither may take the other's
  (donated) buffers ("Buffer has been deleted or donated" before)."""
  config = _tiny_lottery_config(levels=1, rewind="finetune", control=control, steps=12)
  results = lottery.run_lottery(config, str(tmp_path))
  assert set(results["levels"][1]["controls"]) == {control}
  assert results["final"]["step"] == 2 * 12 - 5
  done = json.load(open(tmp_path / "levels" / "01_ticket" / "result.json"))
  assert done["steps"] == 12 - 5


def test_finetuning_after_a_cosine_schedule_trains_at_a_stated_nonzero_rate():
  from sparsejax import optim
  from sparsejax.config_validation import validate
  training = validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"},
                       "training": {"num_steps": 100, "lr_schedule": "cosine", "learning_rate": 0.1}}).training
  schedule = optim.make_lr_schedule(training, 100)
  assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(99)) < 1e-4
  assert [float(schedule(t)) for t in (100, 150)] == pytest.approx([0.01, 0.01])  # learning_rate * lr_decay_factor
  step = validate({"model": {"name": "mlp"}, "data": {"name": "mnist1d"},
                   "training": {"num_steps": 100, "lr_schedule": "step", "learning_rate": 0.1}}).training
  assert float(optim.make_lr_schedule(step, 100)(120)) == pytest.approx(0.001)  # a step schedule's last rate


def test_control_keys_do_not_repeat_across_seeds_and_levels():
  keys = {(seed, level): np.asarray(jax.random.key_data(lottery.control_key(seed, lottery.RANDOM_REINIT_STREAM, level)))
          .tobytes() for seed in range(3) for level in range(5)}
  assert len(set(keys.values())) == len(keys)
  other = np.asarray(jax.random.key_data(lottery.control_key(0, lottery.RANDOM_MASK_STREAM, 1))).tobytes()
  assert other not in keys.values()


def test_lr_rewinding_keeps_the_trained_batchnorm_statistics(tmp_path, monkeypatch):
  config = _tiny_lottery_config(levels=1, rewind="lr", control="none", steps=12)
  setup = train_lib.build(config)
  lot = lottery.Lottery(setup, str(tmp_path))
  lot.snapshot = lot.initial
  trained = lot.initial.replace(batch_stats={"marker": np.float32(7.0)})  # the MLP has none: a marker stands in
  monkeypatch.setattr(lottery, "with_masks", lambda state, masks: state)
  monkeypatch.setattr(lot, "_on_devices", lambda state: state)
  state, first, _ = lot._start(1, "ticket", None, trained)
  assert first == 5 and float(state.batch_stats["marker"]) == 7.0
