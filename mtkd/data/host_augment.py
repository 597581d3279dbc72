"""Host-side augmentation: numpy/Pillow on each example, in Grain's worker
threads (the training stream's map), before the batch reaches the device.

`config.<part>.host_augment` (all off by default):
  flip                 left-right with probability 1/2
  pad_crop = p         zero-pad p pixels, crop back at a random offset
                       (CIFAR's 4-pixel pad-and-crop)
  resized_crop = dict(scale=(lo, hi), ratio=(lo, hi))   random-resized
                       crop (torchvision's sampling: 10 tries, then the
                       centre crop), resized back to the input's size
                       (bilinear); scale hi = 0 turns it off
  randaugment = dict(num_ops=N, magnitude=M)   RandAugment (Cubuk et al.
                       2020, torchvision's op list and magnitude bins of
                       31): N ops drawn uniformly, each at magnitude M
  mix = dict(kind='mixup' | 'cutmix', alpha=a)   each example mixed with a
                       partner row of the stream (drawn from the example's
                       seed), lam ~ Beta(a, a); cutmix pastes the partner's
                       box of area 1 - lam (lam then the kept area). The
                       label loss becomes lam * loss(label) + (1 - lam) *
                       loss(partner's label) (`mix_labels`, `label_lam`)
Order: resized crop, pad-crop, flip, RandAugment (per example, uint8
images `[H, W, C]`, C = 1 or 3), then mix (partner augmented likewise, from
its own draw's seed + 1).

Every random choice of example `id` in draw `epoch` (or cached view v) is
drawn from `np.random.default_rng(seed)` with `seed` = `views.epoch_seed`
(or `views.view_seed`): a pure function of (seed, id, epoch or view), so
it does not depend on the batch, the thread, the device layout or the
process, and the caching stage renders a view exactly as the student's
stream replays it.
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from mtkd.errors import UserError

HostAugment = Callable[[np.ndarray, np.ndarray], np.ndarray]
_SALT = 0x4057_A06  # Keeps these draws apart from other uses of the seed.


def _pil(x: np.ndarray):
  from PIL import Image
  return Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x)


def _np(im, channels: int) -> np.ndarray:
  x = np.asarray(im)
  return x[..., None] if x.ndim == 2 else x[..., :channels]


def resized_crop_box(rng: np.random.Generator, h: int, w: int, scale,
                     ratio) -> tuple[int, int, int, int]:
  """(top, left, height, width): torchvision's RandomResizedCrop sampling."""
  area = h * w
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      return (int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)),
              ch, cw)
  in_ratio = w / h  # Fallback: the centre crop at the clamped ratio.
  if in_ratio < ratio[0]:
    cw, ch = w, int(round(w / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = h, int(round(h * ratio[1]))
  else:
    cw, ch = w, h
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resized_crop(x, rng, scale, ratio):
  from PIL import Image
  h, w, c = x.shape
  top, left, ch, cw = resized_crop_box(rng, h, w, scale, ratio)
  crop = x[top:top + ch, left:left + cw]
  return _np(_pil(crop).resize((w, h), Image.BILINEAR), c)


def _pad_crop(x, rng, p):
  h, w, _ = x.shape
  padded = np.pad(x, ((p, p), (p, p), (0, 0)))
  top, left = rng.integers(0, 2 * p + 1, 2)
  return padded[top:top + h, left:left + w]


# RandAugment: torchvision's ops; magnitudes over 31 bins (0..30).
def _signed(rng, v):
  return -v if rng.random() < 0.5 else v


def _affine(im, matrix):
  from PIL import Image
  return im.transform(im.size, Image.AFFINE, matrix, Image.NEAREST,
                      fillcolor=0)


def _ops():
  from PIL import ImageEnhance, ImageOps
  b = np.linspace  # Bins, as torchvision's _augmentation_space.
  enhance = {"Brightness": ImageEnhance.Brightness,
             "Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
             "Sharpness": ImageEnhance.Sharpness}

  def make_enhance(name):
    return lambda im, m, rng: enhance[name](im).enhance(1 + _signed(
        rng, b(0.0, 0.9, 31)[m]))

  return {
      "Identity": lambda im, m, rng: im,
      "ShearX": lambda im, m, rng: _affine(
          im, (1, _signed(rng, b(0.0, 0.3, 31)[m]), 0, 0, 1, 0)),
      "ShearY": lambda im, m, rng: _affine(
          im, (1, 0, 0, _signed(rng, b(0.0, 0.3, 31)[m]), 1, 0)),
      "TranslateX": lambda im, m, rng: _affine(
          im, (1, 0, _signed(rng, b(0.0, 150 / 331 * im.size[0], 31)[m]),
               0, 1, 0)),
      "TranslateY": lambda im, m, rng: _affine(
          im, (1, 0, 0, 0, 1,
               _signed(rng, b(0.0, 150 / 331 * im.size[1], 31)[m]))),
      "Rotate": lambda im, m, rng: im.rotate(
          _signed(rng, b(0.0, 30.0, 31)[m]), fillcolor=0),
      **{name: make_enhance(name) for name in enhance},
      "Posterize": lambda im, m, rng: ImageOps.posterize(
          im, int(8 - np.round(np.arange(31) / ((31 - 1) / 4))[m])),
      "Solarize": lambda im, m, rng: ImageOps.solarize(
          im, int(b(255.0, 0.0, 31)[m])),
      "AutoContrast": lambda im, m, rng: ImageOps.autocontrast(im),
      "Equalize": lambda im, m, rng: ImageOps.equalize(im),
  }


def _randaugment(x, rng, num_ops, magnitude, ops):
  im = _pil(x)
  names = list(ops)
  for _ in range(num_ops):
    im = ops[names[int(rng.integers(len(names)))]](im, magnitude, rng)
  return _np(im, x.shape[-1])


@dataclasses.dataclass(frozen=True)
class Spec:
  flip: bool = False
  pad_crop: int = 0
  scale: tuple[float, float] = (0.0, 0.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  num_ops: int = 0
  magnitude: int = 9
  mix: str = ""  # '', 'mixup' or 'cutmix'.
  alpha: float = 1.0


def spec(cfg) -> Spec | None:
  """The settings (module docstring), checked; None when all are off."""
  if cfg is None:
    return None
  rc = dict(cfg.get("resized_crop") or {})
  ra = dict(cfg.get("randaugment") or {})
  mx = dict(cfg.get("mix") or {})
  s = Spec(flip=bool(cfg.get("flip", False)),
           pad_crop=int(cfg.get("pad_crop", 0)),
           scale=tuple(float(v) for v in rc.get("scale", (0.0, 0.0))),
           ratio=tuple(float(v) for v in rc.get("ratio", (3 / 4, 4 / 3))),
           num_ops=int(ra.get("num_ops", 0)),
           magnitude=int(ra.get("magnitude", 9)),
           mix=str(mx.get("kind", "") or ""),
           alpha=float(mx.get("alpha", 1.0)))
  if s.mix not in ("", "mixup", "cutmix") or s.alpha <= 0:
    raise UserError(f"host_augment.mix {mx!r}: kind '', 'mixup' or 'cutmix', "
                    "alpha > 0.")
  if s.pad_crop < 0 or s.num_ops < 0 or not 0 <= s.magnitude <= 30:
    raise UserError(f"host_augment {cfg!r}: pad_crop and randaugment."
                    "num_ops must be >= 0, randaugment.magnitude in [0, 30].")
  if s.scale[1] and not (0 < s.scale[0] <= s.scale[1] <= 1
                         and 0 < s.ratio[0] <= s.ratio[1]):
    raise UserError(f"host_augment.resized_crop {rc!r}: need 0 < scale lo "
                    "<= hi <= 1 and 0 < ratio lo <= hi.")
  if s == Spec(magnitude=s.magnitude, ratio=s.ratio, alpha=s.alpha):
    return None
  return s


def mix_spec(cfg) -> Spec | None:
  """The settings when they mix examples (`mix`), else None."""
  s = spec(cfg)
  return s if s is not None and s.mix else None


@dataclasses.dataclass(frozen=True)
class MixPlan:
  """Per example: the partner (a position in the stream's rows), lam, and
  for cutmix the pasted box (top, left, height, width; 0-sized for mixup)."""
  partner: np.ndarray
  lam: np.ndarray
  box: np.ndarray


def mix_plan(s: Spec, seeds: np.ndarray, n: int, h: int, w: int) -> MixPlan:
  """The mix of each example, drawn from its seed alone."""
  partner, lam, box = [], [], []
  for seed in seeds:
    rng = np.random.default_rng([_SALT, int(seed), 1])
    partner.append(int(rng.integers(n)))
    lam_i = float(rng.beta(s.alpha, s.alpha))
    b = (0, 0, 0, 0)
    if s.mix == "cutmix":  # Box of area (1 - lam) h w, clipped.
      ch, cw = int(h * math.sqrt(1 - lam_i)), int(w * math.sqrt(1 - lam_i))
      cy, cx = int(rng.integers(h)), int(rng.integers(w))
      top, left = max(cy - ch // 2, 0), max(cx - cw // 2, 0)
      bottom, right = min(cy + (ch + 1) // 2, h), min(cx + (cw + 1) // 2, w)
      b = (top, left, bottom - top, right - left)
      lam_i = 1 - b[2] * b[3] / (h * w)
    lam.append(lam_i)
    box.append(b)
  return MixPlan(np.asarray(partner, np.int64), np.asarray(lam, np.float32),
                 np.asarray(box, np.int64).reshape(-1, 4))


def apply_mix(s: Spec, x: np.ndarray, other: np.ndarray, plan: MixPlan
              ) -> np.ndarray:
  """float32 inputs mixed with their partners' (`x`, `other` float32)."""
  if s.mix == "mixup":
    lam = plan.lam.reshape((-1,) + (1,) * (x.ndim - 1))
    return lam * x + (1 - lam) * other
  out = x.copy()
  for i, (top, left, bh, bw) in enumerate(plan.box):
    out[i, top:top + bh, left:left + bw] = other[i, top:top + bh,
                                                 left:left + bw]
  return out


def make(cfg) -> HostAugment | None:
  """`(uint8 images [B, H, W, C], seeds int [B]) -> augmented images`, or
  None when no per-example op is on (`mix` is the stream's, `mix_plan`)."""
  s = spec(cfg)
  if s is None or s == Spec(magnitude=s.magnitude, ratio=s.ratio,
                            alpha=s.alpha, mix=s.mix):
    return None
  ops = _ops() if s.num_ops else None

  def one(x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([_SALT, int(seed)])
    if s.scale[1]:
      x = _resized_crop(x, rng, s.scale, s.ratio)
    if s.pad_crop:
      x = _pad_crop(x, rng, s.pad_crop)
    if s.flip and rng.random() < 0.5:
      x = x[:, ::-1]
    if s.num_ops:
      x = _randaugment(x, rng, s.num_ops, s.magnitude, ops)
    return x

  def augment(x: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] not in (1, 3):
      raise UserError(f"host_augment needs uint8 images [B, H, W, 1 or 3]; "
                      f"got {x.dtype} {x.shape}. Use the in-step "
                      "augmentation (config.<part>.augment) for other "
                      "inputs.")
    return np.stack([one(xi, s) for xi, s in zip(x, seeds, strict=True)])
  return augment
