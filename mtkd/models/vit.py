"""Vision Transformer (Dosovitskiy et al. 2021) in timm's layout.

A `patch` x `patch` convolution at stride `patch` (with bias; leftover
pixels at the right and bottom edges are dropped, as PyTorch's) embeds the
image as tokens; a learned class token is prepended and learned position
embeddings (one per token, the class token's included) are added. Then
`depth` pre-LN encoder blocks: x + attn(LN(x)), x + MLP(LN(x)), with
multi-head self-attention (a fused qkv projection with bias, an output
projection) and an MLP of `mlp_ratio` x `dim` hidden units with exact
(erf) GELU; a final LayerNorm. LayerNorms use eps 1e-6, as timm's;
`dropout` (timm's drop_rate, 0 by default) acts after the position
embeddings and on each block branch's output, in training only. The
features are the class token's output ([B, dim]); timm's `head` is the
task's head here. Registered (timm's `vit_*_patch16_224`; parameters with a
1000-class head at 224x224): `vit_ti16` (dim 192, heads 3, 5.72M),
`vit_s16` (384, heads 6, 22.05M), `vit_b16` (768, heads 12, 86.57M), all
depth 12 and patch 16; `vit` is the generic trunk. The position embeddings'
shape follows the input size, so a model is tied to its image size.

Names, for a timm converter: `patch_embed.proj` -> `patch_embed`,
`cls_token`, `pos_embed`, `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2}` -> `block_{i}/{norm1, attn/qkv, ...}` (Dense kernels are
the transposed Linear weights; qkv's output is laid out [3, heads,
head_dim] as timm's), `norm` -> `norm`. `blocks` holds each encoder
block's output, `block_0`..`block_{depth-1}` ([B, tokens, dim]).

`EncoderBlock` takes an optional key mask, so the text Transformer
(`mtkd.models.transformer`) reuses it.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.layers import images

_LN_EPS = 1e-6
_dense = functools.partial(nn.Dense,
                           kernel_init=nn.initializers.xavier_uniform())


class SelfAttention(nn.Module):
  """Multi-head self-attention; `mask` [B, L] (True = attend to that key)
  or [B, L, L] (query, key; e.g. causal). Softmax in float32 whatever the
  compute dtype."""
  dim: int
  heads: int
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None):
    if self.dim % self.heads:
      raise ValueError(f"dim {self.dim} is not divisible by {self.heads} "
                       "heads.")
    b, n, head_dim = x.shape[0], x.shape[1], self.dim // self.heads
    qkv = _dense(3 * self.dim, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.heads, head_dim), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    logits = logits * head_dim ** -0.5
    if mask is not None:
      mask = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
      logits = jnp.where(mask, logits,
                         jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, self.dim)
    return _dense(self.dim, dtype=self.dtype, name="proj")(out)


class Mlp(nn.Module):
  """fc1 - GELU (exact) - fc2."""
  hidden: int
  dim: int
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _dense(self.hidden, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return _dense(self.dim, dtype=self.dtype, name="fc2")(x)


class EncoderBlock(nn.Module):
  """Pre-LN: x + attn(LN(x)), then x + MLP(LN(x)); dropout (training only)
  on each branch's output."""
  dim: int
  heads: int
  mlp_ratio: float
  dropout: float
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    ln = functools.partial(nn.LayerNorm, epsilon=_LN_EPS, dtype=self.dtype)

    def drop(y):
      if not self.dropout:
        return y
      return nn.Dropout(self.dropout, deterministic=not train)(y)

    y = SelfAttention(self.dim, self.heads, self.dtype, name="attn")(
        ln(name="norm1")(x), mask)
    x = x + drop(y)
    y = Mlp(int(self.dim * self.mlp_ratio), self.dim, self.dtype,
            name="mlp")(ln(name="norm2")(x))
    return x + drop(y)


@TRUNKS.register("vit")
class ViT(nn.Module):
  """ViT with a class token; features = the class token's final output."""
  patch: int = 16
  dim: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    x = images(x, "vit").astype(self.dtype)
    x = nn.Conv(self.dim, (self.patch, self.patch), self.patch,
                padding="VALID", dtype=self.dtype, name="patch_embed")(x)
    b, d = x.shape[0], x.shape[-1]
    x = x.reshape(b, -1, d)
    init = nn.initializers.normal(0.02)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d))
    pos = self.param("pos_embed", init, (1, x.shape[1] + 1, d))
    x = jnp.concatenate(
        [jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
    x = x + pos.astype(self.dtype)
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    blocks = {}
    for i in range(self.depth):
      x = EncoderBlock(self.dim, self.heads, self.mlp_ratio, self.dropout,
                       self.dtype, name=f"block_{i}")(x, train=train)
      blocks[f"block_{i}"] = x
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="norm")(x)
    return x[:, 0], blocks


for _name, _dim, _heads in (("vit_ti16", 192, 3), ("vit_s16", 384, 6),
                            ("vit_b16", 768, 12)):
  TRUNKS.register(_name)(functools.partial(
      ViT, patch=16, dim=_dim, depth=12, heads=_heads))
