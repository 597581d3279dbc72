"""A BERT-style Transformer encoder over token ids `[B, L]` (PAD = 0).

Token embeddings (ids as `mtkd.models.text.token_ids` reads them: float ids
rounded, ids at or above `vocab_size` read as UNK) and a learned CLS vector
prepended at position 0 (a parameter, not a vocabulary id, so any
tokenizer's vocabulary works); the tokens take positions 1..L, so
`max_len` counts tokens without the CLS. Learned position embeddings, then
`depth` pre-LN encoder blocks (`mtkd.models.vit.EncoderBlock`: attention
with a fused qkv projection, MLP of `mlp_ratio` x `dim` with exact GELU,
dropout on the embeddings and on each branch's output in training), a final
LayerNorm (eps 1e-6) and CLS pooling: the features are the CLS position's
output, [B, dim]. Unlike BERT, the blocks are pre-LN (stable without
warm-up) and there is no pooler Dense or token-type embedding.

Invariant: appending PAD tokens never changes the features (at inference:
in training, dropout's draws depend on the length). Attention never
reads a PAD key (masked before the softmax, so its weight is exactly 0), and
everything else is per position; the CLS is always a valid key, so no
softmax row is empty. `blocks` holds each block's output
(`block_0`..`block_{depth-1}`, [B, 1 + L, dim]) with PAD positions zeroed.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.text import token_ids
from mtkd.models.vit import EncoderBlock


@TRUNKS.register("transformer_encoder")
class TransformerEncoder(nn.Module):
  """Pre-LN Transformer encoder with CLS pooling; see the module doc."""
  vocab_size: int = 10000
  max_len: int = 512
  dim: int = 256
  depth: int = 4
  heads: int = 4
  mlp_ratio: float = 4.0
  dropout: float = 0.1
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if x.ndim != 2 or x.shape[1] > self.max_len:
      raise ValueError(f"transformer_encoder needs token ids [B, L] with L "
                       f"<= max_len {self.max_len}, got {x.shape}.")
    ids, mask = token_ids(x, self.vocab_size)
    b, length = ids.shape
    init = nn.initializers.normal(0.02)
    tokens = nn.Embed(self.vocab_size, self.dim, embedding_init=init,
                      dtype=self.dtype, name="token_embed")(ids)
    cls = self.param("cls_token", init, (1, 1, self.dim))
    pos = self.param("pos_embed", init, (self.max_len + 1, self.dim))
    x = jnp.concatenate([jnp.broadcast_to(
        cls.astype(self.dtype), (b, 1, self.dim)), tokens], axis=1)
    x = x + pos[:length + 1].astype(self.dtype)
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
    keep = mask[..., None].astype(self.dtype)
    blocks = {}
    for i in range(self.depth):
      x = EncoderBlock(self.dim, self.heads, self.mlp_ratio, self.dropout,
                       self.dtype, name=f"block_{i}")(x, mask, train)
      blocks[f"block_{i}"] = x * keep
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x[:, 0])
    return x, blocks
