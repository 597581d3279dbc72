"""In-step input augmentation: pure functions of (inputs, key).

Augmenting inside the jitted step (not in the host pipeline) keeps the step a
function of `(state, batch, rng)` and lets an online teacher see exactly the
student's view (consistent teaching, Beyer et al. 2022). With a cached
teacher the student's view differs from the one the teacher's logits were
computed on (the "fixed teacher" setting).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def random_shift(max_shift: int) -> Augment:
  """Translates each image by up to `max_shift` pixels in each direction
  (zero fill), as Hinton et al. (2015) jitter MNIST inputs by 2 pixels."""
  def shift(x: jax.Array, key: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"random_shift needs images [B, H, W, C], got {x.shape}")
    s = max_shift
    b, h, w, _ = x.shape
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * s + 1)

    def one(img, off):
      return jax.lax.dynamic_slice(img, (off[0], off[1], 0),
                                   (h, w, img.shape[-1]))
    return jax.vmap(one)(padded, offsets)
  return shift


def gaussian_noise(stddev: float) -> Augment:
  """Adds N(0, stddev^2) noise to every input value (images or vectors)."""
  def noise(x: jax.Array, key: jax.Array) -> jax.Array:
    return x + stddev * jax.random.normal(key, x.shape, x.dtype)
  return noise


def horizontal_flip() -> Augment:
  """Mirrors each image left-right with probability 1/2 (the CIFAR recipe's
  flip; with `max_shift=4` the 4-pixel pad-and-crop completes it)."""
  def flip(x: jax.Array, key: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"horizontal_flip needs images [B, H, W, C], got "
                       f"{x.shape}")
    heads = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(heads, x[:, :, ::-1], x)
  return flip


def make(cfg) -> Augment | None:
  """From `{flip, max_shift, noise}` (off: False / 0); None when nothing is
  on."""
  if cfg is None:
    return None
  parts = []
  if cfg.get("flip", False):
    parts.append(horizontal_flip())
  if cfg.get("max_shift", 0):
    parts.append(random_shift(int(cfg.max_shift)))
  if cfg.get("noise", 0.0):
    parts.append(gaussian_noise(float(cfg.noise)))
  if not parts:
    return None

  def augment(x: jax.Array, key: jax.Array) -> jax.Array:
    for i, f in enumerate(parts):
      x = f(x, jax.random.fold_in(key, i))
    return x
  return augment
