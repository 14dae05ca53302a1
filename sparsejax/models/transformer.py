"""Transformers: a Vision Transformer (ViT) and a decoder-only GPT, blocks optionally stacked with `nn.scan`.

Both are stacks of the same pre-LN block (Xiong et al. 2020, "On Layer Normalization in the Transformer
Architecture"): x + attn(ln1(x)), then x + mlp(ln2(x)), with multi-head self-attention (Vaswani et al. 2017) and a
GELU MLP. The ViT is Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words"); the GPT is GPT-2 (Radford et al. 2019):
token and learned position embeddings, causal attention, a final LayerNorm and a head tied to the token embedding
(or not, by option).

Param paths, with scan=False (blocks counted from 0):
  block_{i}/ln1/{scale,bias}, block_{i}/attn/{query,key,value}/kernel (width, heads, head_dim) and bias
  (heads, head_dim), block_{i}/attn/out/kernel (heads, head_dim, width), block_{i}/ln2, block_{i}/mlp/fc1/kernel
  (width, hidden), block_{i}/mlp/fc2/kernel (hidden, width), ln_f;
  ViT: patch_embed/kernel (p, p, channels, width), cls (width,) with pool='cls', pos_embedding (tokens, width),
  head/kernel; GPT: wte/embedding (vocab, width), wpe/embedding (context, width), head/kernel when untied.
With scan=True the blocks are one module `blocks` whose params carry a leading (depth, ...) axis, e.g.
`blocks/attn/query/kernel` of shape (depth, width, heads, head_dim). The same weights give the same logits either way
(stack the block_{i} trees along a new axis 0).

`sharding_rules(name)` gives the regex -> PartitionSpec rules of `sparsejax.parallel` for these paths: the "model"
axis on attention heads and the MLP hidden units (Shoeybi et al. 2019, "Megatron-LM"), "fsdp" on the width of the
embeddings and of every block kernel; a scanned leaf's leading depth axis is never split.

>>> import jax, jax.numpy as jnp
>>> model = gpt(257, size="nano", context=64, scan=True)
>>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64), jnp.int32))
>>> shapes["params"]["blocks"]["attn"]["query"]["kernel"].shape
(4, 128, 4, 32)
>>> jax.eval_shape(model.apply, shapes, jnp.zeros((2, 16), jnp.int32)).shape
(2, 16, 257)
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax.models import common

# (width, depth, heads): ViT-B from Dosovitskiy et al. 2021 (Table 1), Ti and S from Touvron et al. 2021 (DeiT).
VIT_SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12)}
# (width, depth, heads): 0.86M, 3.3M, 10.8M and 85M params with the 257-token byte vocabulary and context 256;
# "small" is GPT-2 small (Radford et al. 2019), 124M params with its 50257-token vocabulary and context 1024.
GPT_SIZES = {"nano": (128, 4, 4), "micro": (256, 4, 4), "mini": (384, 6, 6), "small": (768, 12, 12)}
POOLS = ("cls", "gap")
EMBED_STD = 0.02  # token, position and class embeddings: GPT-2's normal(0.02)


class Attention(nn.Module):
  """Multi-head self-attention with `query`/`key`/`value` kernels (width, heads, head_dim) and an `out` kernel
  (heads, head_dim, width); softmax in float32 whatever the computation dtype."""
  heads: int
  causal: bool
  kernel_init: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.heads

    def project(name: str, features, axis) -> nn.DenseGeneral:
      # The fan-in is `width` for all four: the out projection contracts heads x head_dim = width.
      return nn.DenseGeneral(features, axis=axis, kernel_init=common.kernel_initializer(self.kernel_init),
                             bias_init=common.bias_initializer(self.kernel_init, width), dtype=self.dtype,
                             param_dtype=jnp.float32, name=name)

    q, k, v = (project(n, (self.heads, head_dim), -1)(x) for n in ("query", "key", "value"))
    logits = jnp.einsum("nqhd,nkhd->nhqk", q, k).astype(jnp.float32) / np.sqrt(head_dim)
    if self.causal:
      t = x.shape[1]
      allowed = jnp.tril(jnp.ones((t, t), bool)).reshape(1, 1, t, t)
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
    return project("out", width, (-2, -1))(y)


class Block(nn.Module):
  """A pre-LN transformer block. Called as `block(x, None) -> (x, None)`, the carry signature of `nn.scan`."""
  heads: int
  mlp_ratio: int
  causal: bool
  dropout: float
  deterministic: bool
  kernel_init: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
    width = x.shape[-1]
    drop = nn.Dropout(self.dropout, deterministic=self.deterministic)
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln1")(x)
    x = x + drop(Attention(self.heads, self.causal, self.kernel_init, self.dtype, name="attn")(h))
    h = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln2")(x)
    x = x + drop(Mlp(self.mlp_ratio * width, self.kernel_init, self.dtype, name="mlp")(h))
    return x, None


class Mlp(nn.Module):
  """fc1 (width -> hidden), GELU, fc2 (hidden -> width)."""
  hidden: int
  kernel_init: str
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    x = nn.gelu(common.dense(x, self.hidden, "fc1", self.kernel_init, self.dtype))
    return common.dense(x, width, "fc2", self.kernel_init, self.dtype)


def blocks(x: jax.Array, depth: int, scan: bool, train: bool, **block_args: Any) -> jax.Array:
  """`depth` blocks: modules `block_0`.. `block_{depth-1}`, or one `blocks` module scanned `depth` times with its
  params stacked along a new leading axis (Flax `nn.scan`; the block is traced and compiled once)."""
  block_args = dict(block_args, deterministic=not train)
  if scan:
    stack = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True}, length=depth)
    return stack(**block_args, name="blocks")(x, None)[0]
  for i in range(depth):
    x = Block(**block_args, name=f"block_{i}")(x)[0]
  return x


class ViT(nn.Module):
  """Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches embedded by a strided conv, a class token
  (pool='cls') or global average pooling of the patch tokens (pool='gap'), learned position embeddings, pre-LN blocks,
  a final LayerNorm and a linear head. Input NHWC images whose sides the patch size divides; logits (N, num_classes).
  """
  num_classes: int
  width: int = 192
  depth: int = 12
  heads: int = 3
  mlp_ratio: int = 4
  patch_size: int = 4
  pool: str = "cls"
  dropout: float = 0.0
  scan: bool = False
  kernel_init: str = "lecun"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    common.check_images("ViT", x)
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"ViT: patch_size {p} does not divide the image sides {x.shape[1:3]}")
    x = common.conv(jnp.asarray(x, self.dtype), self.width, p, "patch_embed", self.kernel_init, self.dtype,
                    strides=p, padding=0)
    x = x.reshape(x.shape[0], -1, self.width)
    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.normal(EMBED_STD), (self.width,), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(EMBED_STD), x.shape[1:], jnp.float32)
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos.astype(x.dtype)[None])
    x = blocks(x, self.depth, self.scan, train, heads=self.heads, mlp_ratio=self.mlp_ratio, causal=False,
               dropout=self.dropout, kernel_init=self.kernel_init, dtype=self.dtype)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_f")(x)
    x = x[:, 0] if self.pool == "cls" else jnp.mean(x, axis=1)
    return common.logits(common.dense(x, self.num_classes, "head", self.kernel_init, self.dtype))


class GPT(nn.Module):
  """Decoder-only transformer (GPT-2, Radford et al. 2019): tokens (N, T) with T <= context -> logits (N, T, vocab).

  Tokens are cast to int32: the engine initialises every model with a float32 dummy batch of zeros.
  """
  vocab_size: int
  context: int = 256
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  tie_embeddings: bool = True
  dropout: float = 0.0
  scan: bool = False
  kernel_init: str = "lecun"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
    if tokens.ndim != 2 or tokens.shape[1] > self.context:
      raise ValueError(f"GPT expects tokens of shape (N, T) with T <= context={self.context}, got {tokens.shape}")
    tokens = jnp.asarray(tokens, jnp.int32)
    embed = nn.initializers.normal(EMBED_STD)
    wte = nn.Embed(self.vocab_size, self.width, embedding_init=embed, dtype=self.dtype, param_dtype=jnp.float32,
                   name="wte")
    wpe = nn.Embed(self.context, self.width, embedding_init=embed, dtype=self.dtype, param_dtype=jnp.float32,
                   name="wpe")
    x = wte(tokens) + wpe(jnp.arange(tokens.shape[1]))[None]
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = blocks(x, self.depth, self.scan, train, heads=self.heads, mlp_ratio=self.mlp_ratio, causal=True,
               dropout=self.dropout, kernel_init=self.kernel_init, dtype=self.dtype)
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="ln_f")(x)
    if self.tie_embeddings:
      return common.logits(wte.attend(x))
    head = nn.Dense(self.vocab_size, use_bias=False, kernel_init=common.kernel_initializer(self.kernel_init),
                    dtype=self.dtype, param_dtype=jnp.float32, name="head")
    return common.logits(head(x))


def _check_size(model: str, sizes: dict, size: str, width: Any, depth: Any, heads: Any, mlp_ratio: Any,
                dropout: Any, scan: Any) -> dict:
  """The checked width, depth, heads, mlp_ratio, dropout and scan of a size preset with overrides (None: the
  preset's)."""
  common.check_choice(model, "size", size, tuple(sizes))
  preset = dict(zip(("width", "depth", "heads"), sizes[size]))
  given = {"width": width, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio}
  out = {k: common.check_positive_int(model, k, preset[k] if v is None else v) for k, v in given.items()}
  if out["width"] % out["heads"]:
    raise ValueError(f"{model}: width must be a multiple of heads, got width={out['width']}, heads={out['heads']}")
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    raise ValueError(f"{model}: dropout must be a number in [0, 1), got {dropout!r}")
  return dict(out, dropout=float(dropout), scan=common.check_bool(model, "scan", scan))


def vit(num_classes: int, *, size: str = "ti", width: int | None = None, depth: int | None = None,
        heads: int | None = None, mlp_ratio: int = 4, patch_size: int = 4, pool: str = "cls", dropout: float = 0.0,
        scan: bool = False, kernel_init: str = "lecun", dtype: Any = "float32") -> ViT:
  """ViT-Ti/S/B (`size` 'ti' | 's' | 'b'; width, depth and heads override the size's). patch_size 4 suits 32x32
  CIFAR images (64 patches); the paper's ImageNet models use 16."""
  num_classes, dtype = common.check_common("vit", num_classes, kernel_init, dtype)
  args = _check_size("vit", VIT_SIZES, size, width, depth, heads, mlp_ratio, dropout, scan)
  common.check_choice("vit", "pool", pool, POOLS)
  patch_size = common.check_positive_int("vit", "patch_size", patch_size)
  return ViT(num_classes, patch_size=patch_size, pool=pool, kernel_init=kernel_init, dtype=dtype, **args)


def gpt(num_classes: int, *, size: str = "nano", width: int | None = None, depth: int | None = None,
        heads: int | None = None, mlp_ratio: int = 4, context: int = 256, tie_embeddings: bool = True,
        dropout: float = 0.0, scan: bool = False, kernel_init: str = "lecun", dtype: Any = "float32") -> GPT:
  """A GPT (`size` one of GPT_SIZES; width, depth and heads override it) over a vocabulary of `num_classes` tokens
  (the dataset's classes: a language model classifies the next token) and at most `context` positions."""
  vocab_size, dtype = common.check_common("gpt", num_classes, kernel_init, dtype)
  args = _check_size("gpt", GPT_SIZES, size, width, depth, heads, mlp_ratio, dropout, scan)
  context = common.check_positive_int("gpt", "context", context)
  tie_embeddings = common.check_bool("gpt", "tie_embeddings", tie_embeddings)
  return GPT(vocab_size, context=context, tie_embeddings=tie_embeddings, kernel_init=kernel_init, dtype=dtype, **args)


# (path suffix inside a block, PartitionSpec of the unstacked leaf); a scanned leaf gets a leading None.
_BLOCK_RULES = (
    (r"attn/(query|key|value)/kernel", ("fsdp", "model", None)),
    (r"attn/(query|key|value)/bias", ("model", None)),
    (r"attn/out/kernel", ("model", None, "fsdp")),
    (r"mlp/fc1/kernel", ("fsdp", "model")),
    (r"mlp/fc1/bias", ("model",)),
    (r"mlp/fc2/kernel", ("model", "fsdp")),
)
# Outside the blocks. The vocabulary (257 bytes and tokens) rarely divides a mesh axis, so embeddings split the width.
_TOP_RULES = {
    "gpt": ((r"(^|/)wte/embedding$", (None, "fsdp")), (r"(^|/)wpe/embedding$", (None, "fsdp")),
            (r"(^|/)head/kernel$", ("fsdp", None))),
    "vit": ((r"(^|/)patch_embed/kernel$", (None, None, None, "fsdp")), (r"(^|/)pos_embedding$", (None, "fsdp")),
            (r"(^|/)head/kernel$", ("fsdp", None))),
}


def sharding_rules(name: str) -> tuple[tuple[str, tuple], ...]:
  """`config.mesh.rules` for model `name` ('gpt' or 'vit'), scanned or not; what no rule names (LayerNorms, other
  biases, the class token) falls to `sparsejax.parallel`'s FSDP default, which replicates anything that small.

  >>> rules = dict(sharding_rules("gpt"))
  >>> rules[r"(^|/)blocks/attn/(query|key|value)/kernel$"], rules[r"(^|/)block_\\d+/mlp/fc1/kernel$"]
  ((None, 'fsdp', 'model', None), ('fsdp', 'model'))
  """
  if name not in _TOP_RULES:
    raise ValueError(f"sharding_rules: got {name!r}; accepted values: {sorted(_TOP_RULES)}")
  stacked = tuple((rf"(^|/)blocks/{suffix}$", (None, *spec)) for suffix, spec in _BLOCK_RULES)
  unstacked = tuple((rf"(^|/)block_\d+/{suffix}$", spec) for suffix, spec in _BLOCK_RULES)
  return stacked + unstacked + _TOP_RULES[name]
