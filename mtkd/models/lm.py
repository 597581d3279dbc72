"""A small GPT-style causal Transformer language model over token ids.

Token ids `[B, L]` (PAD = 0; read as `mtkd.models.text.token_ids` reads
them), learned token and position embeddings, `depth` pre-LN blocks
(`mtkd.models.vit.EncoderBlock`) whose attention is causal: position i
attends to the non-PAD positions j <= i (and always to itself, so no
softmax row is empty), then a final LayerNorm (eps 1e-6).

Outputs: `blocks["tokens"]` `[B, L, dim]`, what a sequence task's head
reads (position i predicts token i + 1), and features `[B, dim]`, the
output at the last non-PAD position, which has read the whole text: what
classification heads read, so one trunk carries a language-model task and
classification tasks together. `block_0`..`block_{depth-1}` are each
block's output.

Invariants (tested): the output at position i depends only on tokens 0..i;
appending PAD tokens changes neither the features nor any real position's
output (at inference; dropout's draws depend on the length).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS
from mtkd.models.text import token_ids
from mtkd.models.vit import EncoderBlock


@TRUNKS.register("causal_lm")
class CausalLM(nn.Module):
  """Pre-LN causal Transformer decoder; see the module docstring."""
  vocab_size: int = 10000
  max_len: int = 512
  dim: int = 256
  depth: int = 2
  heads: int = 4
  mlp_ratio: float = 4.0
  dropout: float = 0.0
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    if x.ndim != 2 or x.shape[1] > self.max_len:
      raise ValueError(f"causal_lm needs token ids [B, L] with L <= max_len "
                       f"{self.max_len}, got {x.shape}.")
    ids, real = token_ids(x, self.vocab_size)
    length = ids.shape[1]
    init = nn.initializers.normal(0.02)
    h = nn.Embed(self.vocab_size, self.dim, embedding_init=init,
                 dtype=self.dtype, name="token_embed")(ids)
    pos = self.param("pos_embed", init, (self.max_len, self.dim))
    h = h + pos[:length].astype(self.dtype)
    if self.dropout:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    causal = jnp.tril(jnp.ones((length, length), bool))
    mask = causal[None] & (real[:, None, :] | jnp.eye(length, dtype=bool))
    blocks = {}
    for i in range(self.depth):
      h = EncoderBlock(self.dim, self.heads, self.mlp_ratio, self.dropout,
                       self.dtype, name=f"block_{i}")(h, mask, train)
      blocks[f"block_{i}"] = h
    h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(h)
    last = jnp.maximum(jnp.sum(real, axis=1) - 1, 0)
    features = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return features, dict(blocks, tokens=h)
