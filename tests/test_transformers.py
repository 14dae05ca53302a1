"""The transformers of the zoo (ViT, GPT) and the text corpus they train on: param counts against a hand count, scanned
and unscanned blocks computing the same function, causality, the byte tokenizer and document splits, per-token
evaluation, and training steps under sparsify on a (data, fsdp, model) mesh with the models' sharding rules."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import sparsejax as sj
from sparsejax import masks as masks_lib, parallel, steps, train
from sparsejax.data import create_dataset, text
from sparsejax.models import create_model, default_sharding_rules, transformer
from sparsejax.validation import validate
from tiny_dataset import TinyDataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small GPT and ViT: width 32, 2 blocks of 4 heads, MLP hidden 4 * 32.
GPT_KW = {"width": 32, "depth": 2, "heads": 4, "context": 16}
VIT_KW = {"width": 32, "depth": 2, "heads": 4, "patch_size": 4}
VOCAB = text.VOCAB_SIZE  # 257
IMAGE = (8, 8, 3)


def _count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _params(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)["params"]


def _shapes(model, x):
  return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _block_params(d: int, m: int) -> int:
  """One pre-LN block, written out layer by layer."""
  ln1 = ln2 = 2 * d                     # scale and bias
  qkv = 3 * (d * d + d)                 # (d, heads, head_dim) kernels, (heads, head_dim) biases
  out = d * d + d                       # (heads, head_dim, d) kernel, (d,) bias
  fc1, fc2 = d * m + m, m * d + d
  return ln1 + qkv + out + ln2 + fc1 + fc2


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("tie", [True, False])
def test_gpt_param_count_by_hand(scan, tie):
  d, layers, m, vocab, context = 32, 2, 128, VOCAB, 16
  block = _block_params(d, m)
  assert block == 4 * d * d + 2 * d * m + 9 * d + m == 12704
  expected = vocab * d + context * d + layers * block + 2 * d + (0 if tie else d * vocab)
  assert expected == (34208 if tie else 42432)
  params = _shapes(create_model("gpt", VOCAB, **GPT_KW, scan=scan, tie_embeddings=tie), jnp.zeros((1, 16), jnp.int32))
  assert _count(params) == expected
  query = params["blocks"]["attn"]["query"]["kernel"] if scan else params["block_1"]["attn"]["query"]["kernel"]
  assert query.shape == ((2, 32, 4, 8) if scan else (32, 4, 8))
  assert ("head" in params) == (not tie)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_vit_param_count_by_hand(scan, pool):
  d, layers, m, p, classes = 32, 2, 128, 4, 10
  patches = (8 // p) * (8 // p)
  tokens = patches + (pool == "cls")
  expected = ((p * p * 3 * d + d)                  # patch embedding conv and its bias
              + (d if pool == "cls" else 0)        # class token
              + tokens * d                         # position embeddings
              + layers * _block_params(d, m)
              + 2 * d                              # final LayerNorm
              + d * classes + classes)             # head
  assert expected == (27562 if pool == "cls" else 27498)
  params = _shapes(create_model("vit", classes, **VIT_KW, pool=pool, scan=scan), jnp.zeros((1, *IMAGE)))
  assert _count(params) == expected


def test_published_sizes():
  """GPT-2 small (124,439,808 with its vocabulary and context) and ViT-B/16 at 224 (86,567,656): shapes only."""
  gpt2 = create_model("gpt", 50257, size="small", context=1024, scan=True)
  assert _count(jax.eval_shape(gpt2.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))) == 124_439_808
  vit_b = create_model("vit", 1000, size="b", patch_size=16, scan=True)
  assert _count(jax.eval_shape(vit_b.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))) == 86_567_656


def _stack_blocks(params: dict, depth: int) -> dict:
  """Unscanned params -> scanned: block_0 .. block_{depth-1} stacked along a new axis 0 as `blocks`."""
  out = {k: v for k, v in params.items() if not k.startswith("block_")}
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params[f"block_{i}"] for i in range(depth)])
  return out


@pytest.mark.parametrize("name", ["gpt", "vit"])
def test_scan_and_unrolled_blocks_compute_the_same_logits(name):
  kw, x = ((GPT_KW, jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (3, 16)), jnp.int32)) if name == "gpt"
           else (VIT_KW, jnp.asarray(np.random.default_rng(0).normal(size=(3, *IMAGE)), jnp.float32)))
  classes = VOCAB if name == "gpt" else 10
  unrolled, scanned = (create_model(name, classes, **kw, scan=s) for s in (False, True))
  params = _params(unrolled, x)
  stacked = _stack_blocks(params, 2)
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, _shapes(scanned, x))
  a = jax.jit(unrolled.apply)({"params": params}, x)
  b = jax.jit(scanned.apply)({"params": stacked}, x)
  assert a.shape == ((3, 16, VOCAB) if name == "gpt" else (3, 10)) and a.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_gpt_is_causal():
  model = create_model("gpt", VOCAB, **GPT_KW)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 16)).astype(np.int32)
  changed = tokens.copy()
  changed[:, 9] = (changed[:, 9] + 1) % VOCAB
  params = _params(model, jnp.asarray(tokens))
  apply = jax.jit(model.apply)
  a, b = (np.asarray(apply({"params": params}, jnp.asarray(t))) for t in (tokens, changed))
  np.testing.assert_array_equal(a[:, :9], b[:, :9])  # positions before 9 never see token 9
  assert np.abs(a[:, 9:] - b[:, 9:]).min(axis=-1).max() > 0  # position 9 on do


def test_bad_options_name_the_option():
  for name, kwargs, field in [("gpt", {"size": "huge"}, "size"), ("gpt", {"width": 30, "heads": 4}, "heads"),
                              ("gpt", {"dropout": 1.0}, "dropout"), ("gpt", {"scan": "yes"}, "scan"),
                              ("gpt", {"context": 0}, "context"), ("vit", {"pool": "max"}, "pool"),
                              ("vit", {"patch_size": -1}, "patch_size"), ("vit", {"size": "l"}, "size")]:
    with pytest.raises(ValueError, match=field):
      create_model(name, 10, **kwargs)
  with pytest.raises(ValueError, match="context=16"):
    jax.eval_shape(create_model("gpt", VOCAB, **GPT_KW).init, jax.random.key(0), jnp.zeros((1, 17), jnp.int32))


def test_default_rules_reach_the_engine():
  """Empty config.mesh.rules: the engine places params by the model's own rules; given rules win."""
  config = validate({"model": {"name": "gpt"}, "data": {"name": "pydocs"}, "training": {"num_steps": 1}})
  assert train._mesh_rules(config)[0] == transformer.sharding_rules("gpt") == default_sharding_rules("gpt")
  config.mesh.rules = [["wte", ["fsdp", None]]]
  assert train._mesh_rules(config)[0] == (("wte", ("fsdp", None)),)
  assert default_sharding_rules("mlp") == ()


# ---------------------------------------------------------------------------------------------------------------------
# The text corpus.

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A directory of 120 small .txt documents (the loader's data_dir), every split non-empty."""
  root = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  words = ["the", "module", "function", "returns", "a", "list", "of", "def", "import", "class", "é", "\n"]
  for i in range(120):
    sub = root / ("library" if i % 2 else "howto")
    sub.mkdir(exist_ok=True)
    (sub / f"doc_{i:03d}.rst.txt").write_text(" ".join(rng.choice(words, 60 + i)), encoding="utf-8")
  (root / "ignored.html").write_text("not a .txt file")
  assert {text.split_of(p) for p in text.list_documents(str(root))} == {"train", "validation", "test"}
  return str(root)


def test_tokenizer_round_trips_bytes():
  data = bytes(range(256)) + "naïve ünïcode → ✓\n".encode()
  tokens = text.encode(data)
  assert tokens.dtype == np.uint16 and tokens.max() < text.EOS and text.decode(tokens) == data
  assert text.decode(np.concatenate([tokens, [text.EOS]])) == data  # the document end is not a byte
  with pytest.raises(ValueError, match="tokens must be in"):
    text.decode(np.array([257]))


def test_splits_are_disjoint_documents_and_windows_shift_by_one(corpus):
  paths = text.list_documents(corpus)
  assert paths == sorted(paths) and len(paths) == 120 and not any(p.endswith(".html") for p in paths)
  by_split = {s: [p for p in paths if text.split_of(p) == s] for s in ("train", "validation", "test")}
  assert sum(map(len, by_split.values())) == len(paths)  # every document in exactly one split
  assert text.split_of("library/os.rst.txt") == text.split_of("library/os.rst.txt")
  ds = create_dataset({"name": "pydocs", "data_dir": corpus, "context": 16}, seed=0)
  assert ds.splits == ("train", "validation", "test") and ds.num_classes == VOCAB and ds.input_shape == (16,)
  for split, docs in by_split.items():  # each split's stream is its own documents, each followed by EOS
    stream = text.read_stream(corpus, docs)
    assert ds.num_examples(split) == (len(stream) - 1) // 16 and int((stream == text.EOS).sum()) == len(docs)
  batch = ds.train_batch(3, 8)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {"image": ((8, 16), np.int32),
                                                                "label": ((8, 16), np.int32)}
  np.testing.assert_array_equal(batch["image"][:, 1:], batch["label"][:, :-1])
  evals = list(ds.eval_batches("validation", 48))
  assert evals[-1]["label"].shape == (48, 16) and evals[-1]["image"].dtype == np.int32
  assert sum(int(b["mask"].sum()) for b in evals) == ds.num_examples("validation")
  few = create_dataset({"name": "pydocs", "data_dir": corpus, "context": 16, "eval_windows": 5}, seed=0)
  assert few.num_examples("validation") == few.num_examples("test") == 5 and few.num_train == ds.num_train
  with pytest.raises(ValueError, match="own validation split"):
    create_dataset({"name": "pydocs", "data_dir": corpus, "validation_size": 10}, seed=0)
  with pytest.raises(ValueError, match="config.data.context"):
    create_dataset({"name": "pydocs", "data_dir": corpus, "context": 0}, seed=0)
  with pytest.raises(FileNotFoundError, match="apt-get install python3.11-doc"):
    create_dataset({"name": "pydocs", "data_dir": os.path.join(corpus, "missing")}, seed=0)


@pytest.mark.skipif(not os.path.isdir(text.CORPUS_DIR),
                    reason=f"needs Debian's {text.PACKAGE} (sudo apt-get install {text.PACKAGE}; .ci/run installs it)")
def test_the_installed_corpus():
  paths = text.list_documents(text.CORPUS_DIR)
  sizes = {s: sum(os.path.getsize(os.path.join(text.CORPUS_DIR, p)) for p in paths if text.split_of(p) == s)
           for s in ("train", "validation", "test")}
  # Debian 12's 3.11.2 package: 497 files; train 9,521,778 bytes, validation 703,267, test 823,230 (440, 25, 32 files).
  # Other releases of the package differ a little, so the test checks proportions.
  assert len(paths) > 400 and sizes["train"] > 0.8 * sum(sizes.values()) and min(sizes.values()) > 300_000
  ds = create_dataset({"name": "pydocs", "context": 256}, seed=0)
  train_docs = sum(text.split_of(p) == "train" for p in paths)
  assert ds.num_train == (sizes["train"] + train_docs - 1) // 256  # every train document ends in EOS
  assert b"Python" in text.decode(ds.train_batch(0, 64)["image"])


def test_evaluation_is_per_token_with_perplexity(corpus):
  """evaluate() over a padded last batch equals the mean token loss computed by hand, and perplexity = exp(loss)."""
  ds = create_dataset({"name": "pydocs", "data_dir": corpus, "context": 16}, seed=0)
  model = create_model("gpt", VOCAB, **GPT_KW)
  mesh = parallel.create_mesh(None)
  tx = sj.sparsify(optax.adam(1e-3), sj.create_pruner({"algorithm": "dense"}))
  state = jax.jit(lambda key: steps.init_state(model, tx, ds.input_shape, key))(jax.random.key(0))
  n = ds.num_examples("test")
  batch_size = 7 if n % 7 else 6  # a padded last batch
  got = steps.evaluate(steps.make_eval_step(model, mesh), state, ds, "test", batch_size, mesh)
  x, y = ds._source("test").read(np.arange(n))
  logits = jax.jit(model.apply)({"params": state.params}, jnp.asarray(x, jnp.int32))
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y))
  assert got["loss"] == pytest.approx(float(jnp.mean(token_loss)), rel=1e-5)
  assert got["accuracy"] == pytest.approx(float(jnp.mean(jnp.argmax(logits, -1) == y)))
  assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


# ---------------------------------------------------------------------------------------------------------------------
# Training under sparsify on 8 devices: data=2, fsdp=2, model=2.

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (host) devices; see tests/conftest.py")
# Kernels of the blocks and the heads; not the embeddings (patch_embed) nor the stacked LayerNorm scales (L, d).
PRUNABLE = ("!embed", "kernel$")
EXPECTED_SPECS = {  # a few params, written out from the rules: heads and MLP hidden on "model", widths on "fsdp"
    "blocks/attn/query/kernel": P(None, "fsdp", "model", None),
    "blocks/attn/out/kernel": P(None, "model", None, "fsdp"),
    "blocks/mlp/fc1/kernel": P(None, "fsdp", "model"),
    "blocks/mlp/fc2/kernel": P(None, "model", "fsdp"),
    "blocks/mlp/fc1/bias": P(None, "model"),
    "block_1/attn/value/kernel": P("fsdp", "model", None),
    "block_0/mlp/fc2/kernel": P("model", "fsdp"),
    "wte/embedding": P(None, "fsdp"),
    "head/kernel": P("fsdp", None),
    "patch_embed/kernel": P(None, None, None, "fsdp"),
}


def _sharded_steps(name: str, scan: bool, data, num_steps: int = 2):
  config = validate({"model": {"name": name}, "data": {"name": "pydocs"}, "training": {"num_steps": num_steps},
                     "mesh": {"data_parallel": 2, "fsdp": 2, "model": 2}})
  mesh = parallel.create_mesh(config.mesh)
  pruner = sj.create_pruner({"algorithm": "gmp", "target": 0.5, "begin_step": 0, "end_step": 1, "update_every": 1,
                             "prunable": PRUNABLE})
  tx = sj.sparsify(optax.adam(1e-3), pruner)
  model = create_model(name, data.num_classes, **(GPT_KW if name == "gpt" else VIT_KW), scan=scan)
  state = train.create_train_state(config, model, data, jax.random.key(0), tx, mesh)  # placed by the model's rules
  sharding = jax.tree.map(lambda x: x.sharding, state)
  step_fn = train.make_train_step(model, tx, mesh, state_sharding=sharding)
  history = []
  state = train.train_loop(state, step_fn, data, 8, mesh, 0, num_steps,
                           [lambda step, s, metrics: history.append(jax.device_get(metrics))])
  return state, mesh, history


@needs_8
@pytest.mark.parametrize("name,scan", [("gpt", True), ("gpt", False), ("vit", True), ("vit", False)])
def test_rules_place_scanned_and_unrolled_params(name, scan):
  """Shapes only (nothing compiles): every rule divides its param on the mesh, and the specs are the ones written out
  above."""
  mesh = parallel.create_mesh({"data_parallel": 2, "fsdp": 2, "model": 2})
  model = create_model(name, VOCAB if name == "gpt" else 10, **(GPT_KW if name == "gpt" else VIT_KW), scan=scan)
  x = jnp.zeros((1, 16), jnp.int32) if name == "gpt" else jnp.zeros((1, *IMAGE))
  specs = parallel.param_specs(_shapes(model, x), mesh, default_sharding_rules(name))
  flat = dict(masks_lib.flatten_with_paths(specs, is_leaf=lambda v: isinstance(v, P)))
  found = {path: flat[path] for path in EXPECTED_SPECS if path in flat}
  assert len(found) >= 3 and found == {path: EXPECTED_SPECS[path] for path in found}
  assert all(spec == P() for path, spec in flat.items() if "/ln" in path or path.startswith("ln_f"))


# Each compiles a sharded train step: about 30 s on 2 shared cores.
@pytest.mark.slow
@needs_8
@pytest.mark.parametrize("name,scan", [("gpt", True), ("vit", True), ("gpt", False)])
def test_sparse_training_step_on_a_data_fsdp_model_mesh(name, scan, corpus):
  data = (create_dataset({"name": "pydocs", "data_dir": corpus, "context": 16}, seed=0) if name == "gpt"
          else TinyDataset(input_shape=IMAGE))
  state, mesh, history = _sharded_steps(name, scan, data)
  assert all(np.isfinite(float(m["loss"])) for m in history)
  params = masks_lib.flatten_with_paths(state.params)
  want = parallel.param_specs(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state.params), mesh,
                              transformer.sharding_rules(name))
  want = dict(masks_lib.flatten_with_paths(want, is_leaf=lambda v: isinstance(v, P)))
  checked = 0
  for path, x in params:
    assert x.sharding.spec == want[path], path
    if path in EXPECTED_SPECS:
      assert x.sharding.spec == EXPECTED_SPECS[path], path
      checked += 1
  assert checked >= 3
  # The model axis really splits heads: each device holds half of the heads of a query kernel.
  query = dict(params)["blocks/attn/query/kernel" if scan else "block_0/attn/query/kernel"]
  assert query.addressable_shards[0].data.shape[-2] == 2
  masks = dict(masks_lib.flatten_with_paths(sj.get_masks(state.opt_state), is_leaf=lambda v: v is None))
  pruned = [p for p, m in masks.items() if m is not None]
  assert pruned and all(p.endswith("kernel") and "embed" not in p for p in pruned)
  for path in pruned:
    m, w = np.asarray(masks[path]), np.asarray(dict(params)[path])
    assert m.mean() == pytest.approx(0.5, abs=0.01), path
    assert not np.any(w[~m]), f"{path}: a pruned weight is not exactly 0"


# ---------------------------------------------------------------------------------------------------------------------
# The launcher on a tiny GPT and the tiny corpus.

@pytest.mark.slow
@pytest.mark.parametrize("method", ["dense", "heads"])
def test_launcher_trains_a_tiny_gpt(corpus, tmp_path, method):
  workdir = tmp_path / "run"
  sparse = ["--config.sparsity.begin_step=0", "--config.sparsity.end_step=4", "--config.sparsity.update_every=2"]
  cmd = [sys.executable, "-m", "experiments.train", f"--config=configs/text_gpt.py:{method}", f"--workdir={workdir}",
         *(sparse if method != "dense" else []),
         f"--config.data.data_dir={corpus}", "--config.model.context=16", "--config.model.width=32",
         "--config.model.depth=2", "--config.model.heads=4", "--config.data.eval_windows=8",
         "--config.training.num_steps=6", "--config.training.warmup_steps=2", "--config.training.batch_size=8",
         "--config.training.eval_batch_size=8", "--config.training.eval_every=3", "--config.training.log_every=3",
         "--config.training.progress=lines"]
  proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(workdir / "results.json"))
  final = results["final"]
  assert results["model"] == "gpt" and results["dataset"] == "pydocs" and final["step"] == 6
  assert final["test_perplexity"] == pytest.approx(math.exp(final["test_loss"]))
  assert final["test_perplexity"] < VOCAB  # six steps already beat a uniform guess
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in records] == [3, 6] and "validation_perplexity" in records[-1]
  assert "test perplexity" in proc.stdout
  if method == "heads":  # half of each block's 4 heads, whole, counted from the masks
    assert results["units"]["kept"] == results["units"]["pruned"] == 4
    assert results["flops_per_token"]["fraction"] < 1


def test_text_config_validates(monkeypatch):
  monkeypatch.syspath_prepend(REPO)
  from configs import text_gpt  # pylint: disable=g-import-not-at-top
  config = validate(text_gpt.get_config())
  assert config.model.name == "gpt" and config.data.context == config.model.context == 128
  assert "configs/text_gpt.py:METHOD" in text_gpt.__doc__
  model = create_model("gpt", VOCAB, **{k: v for k, v in config.model.to_dict().items() if k != "name"})
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128), jnp.int32))
  assert _count(shapes) == 859_008 - 128 * 128  # nano has 859,008 at context 256: 128 positions fewer


@pytest.mark.slow  # compiling a ViT's sparse step: about a minute each on 2 cores
@pytest.mark.parametrize("method", ["gmp", "rigl"])
def test_cifar10_vit_configs_train_through_tfds_on_mock_data(method, tmp_path):
  """The ViT configs read CIFAR-10 through the same TFDS path as the CNNs (tfds.testing.mock_data here); a tiny ViT
  (the config's model, narrowed) prunes to the target with every block its own layer."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from configs import cifar10_vit  # pylint: disable=g-import-not-at-top
  from sparsejax import train as train_lib  # pylint: disable=g-import-not-at-top
  config = cifar10_vit.get_config(method)
  config.model.width, config.model.depth, config.model.heads = 16, 2, 2
  t = config.training
  t.num_steps, t.batch_size, t.eval_batch_size, t.warmup_steps = 4, 4, 8, 1
  t.eval_every, t.log_every, t.checkpoint_every, t.progress = 0, 2, 0, "none"
  s = config.sparsity
  s.begin_step, s.end_step, s.update_every = 0, 2, 1
  with tfds.testing.mock_data(num_examples=16):
    results = train_lib.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["dataset"] == "cifar10" and results["model"] == "vit"
  assert results["final"]["sparsity"] == pytest.approx(0.9, abs=2e-3)
  assert "blocks/mlp/fc1/kernel[1]" in results["layers"]  # scanned blocks counted layer by layer
  assert 0 < results["flops_per_token"]["fraction"] < 1
