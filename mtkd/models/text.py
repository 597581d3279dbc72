"""Text trunks over token ids `[B, L]` (PAD = 0), registered in TRUNKS.

mtkd's input pipeline casts every input to float32, so the trunks cast ids
back to int32 (exact below 2^24). Invariant: appending PAD tokens never
changes the features (pads are masked out of every reduction, and the
convolution sees zeros at pad positions exactly as at the sequence edge).
Ids at or above `vocab_size` are read as UNK (1) rather than gathered out
of bounds. `vocab_size` must match the dataset's (`config.data.vocab_size`
for `rotten_tomatoes`). Importing this module registers the trunks.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtkd.models.base import TRUNKS

PAD, UNK = 0, 1


def token_ids(x: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """int32 ids (out-of-vocabulary -> UNK) and the non-pad mask, [B, L]."""
  ids = x if jnp.issubdtype(x.dtype, jnp.integer) else jnp.rint(x)
  ids = ids.astype(jnp.int32)
  mask = ids != PAD
  return jnp.where(ids < vocab_size, ids, UNK), mask


def _features(x: jax.Array, hidden: int, dropout: float,
              train: bool, dtype: str) -> jax.Array:
  """Dense + ReLU (+ dropout); call inside a compact method."""
  x = nn.relu(nn.Dense(hidden, dtype=dtype)(x))
  if dropout:
    x = nn.Dropout(dropout, deterministic=not train)(x)
  return x


def _embed(x: jax.Array, vocab_size: int, dim: int, dtype: str
           ) -> tuple[jax.Array, jax.Array]:
  """Token embeddings `[B, L, dim]`, zero at pads, and the pad mask
  `[B, L, 1]` (1 = token), in `dtype`; call inside a compact method."""
  ids, mask = token_ids(x, vocab_size)
  m = mask[..., None].astype(dtype)
  return nn.Embed(vocab_size, dim, dtype=dtype)(ids) * m, m


@TRUNKS.register("text_cnn")
class TextCNN(nn.Module):
  """Embedding, a width-`width` 1-D convolution + ReLU, masked max-pool over
  non-pad tokens, Dense + ReLU. Returns (features [B, hidden], blocks)."""
  vocab_size: int = 10000
  embed_dim: int = 64
  channels: int = 128
  width: int = 3
  hidden: int = 128
  dropout: float = 0.0
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    e, m = _embed(x, self.vocab_size, self.embed_dim, self.dtype)
    h = nn.relu(nn.Conv(self.channels, (self.width,), padding="SAME",
                        dtype=self.dtype)(e))
    # ReLU output is >= 0, so zeroing pads then taking the max equals the
    # max over non-pad positions; an all-pad row gives 0, not -inf.
    pooled = jnp.max(h * m, axis=1)
    return (_features(pooled, self.hidden, self.dropout, train, self.dtype),
            {"pooled": pooled})


@TRUNKS.register("bag_of_embeddings")
class BagOfEmbeddings(nn.Module):
  """Mean of the non-pad tokens' embeddings, Dense + ReLU. Returns
  (features [B, hidden], blocks); an all-pad row averages to zeros."""
  vocab_size: int = 10000
  embed_dim: int = 64
  hidden: int = 128
  dropout: float = 0.0
  dtype: str = "float32"  # Compute dtype (see `mtkd.models.base`).

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False):
    e, m = _embed(x, self.vocab_size, self.embed_dim, self.dtype)
    mean = jnp.sum(e, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    return (_features(mean, self.hidden, self.dropout, train, self.dtype),
            {"mean_embedding": mean})
