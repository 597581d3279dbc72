"""Built-in datasets: Fashion-MNIST (IDX), MultiFashion, user `.npz`,
sklearn digits (plain and mixed task kinds) and MNIST-1D.

Each builder takes `config.data` and returns a `Dataset`; none downloads.
"""

import os

import numpy as np

from mtkd.data import idx
from mtkd.data.datasets import DATASETS, Dataset, Split, make_split, next_tokens
from mtkd.errors import UserError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def find_fashion_mnist(directory: str = "") -> str:
  """Returns a directory holding the four Fashion-MNIST IDX files."""
  candidates = [directory] if directory else [
      os.environ.get("MTKD_FASHION_MNIST_DIR", ""), *FASHION_MNIST_DIRS]
  for d in filter(None, candidates):
    if all(_idx_path(d, f) for f in FASHION_MNIST_FILES.values()):
      return d
  where = directory or ", ".join(FASHION_MNIST_DIRS)
  raise UserError(
      f"Fashion-MNIST IDX files not found in {where}. Expected "
      f"{', '.join(FASHION_MNIST_FILES.values())} (optionally .gz). Fix: "
      "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set "
      "--config.data.dir (or $MTKD_FASHION_MNIST_DIR) to a directory holding "
      "the four files.")


def _idx_path(directory: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def load_fashion_mnist(directory: str = "") -> dict[str, np.ndarray]:
  d = find_fashion_mnist(directory)
  out = {}
  for key, stem in FASHION_MNIST_FILES.items():
    path = _idx_path(d, stem)
    try:
      out[key] = idx.load_idx(path)
    except idx.IdxFormatError as e:
      raise UserError(f"Could not read Fashion-MNIST: {e} Fix: re-install or "
                      "re-download the file.") from None
  for split in ("train", "test"):
    x, y = out[f"{split}_x"], out[f"{split}_y"]
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise UserError(
          f"Fashion-MNIST {split} files in {d} have inconsistent shapes "
          f"{x.shape} and {y.shape}; expected [N, H, W] images and [N] labels.")
  return out


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg) -> Dataset:
  """Fashion-MNIST, one task `class` (10 classes)."""
  raw = load_fashion_mnist(cfg.get("dir", ""))
  return Dataset(
      "fashion_mnist",
      make_split(raw["train_x"][..., None], {"class": raw["train_y"]}),
      make_split(raw["test_x"][..., None], {"class": raw["test_y"]}),
      {"class": 10})


def overlay_pairs(images: np.ndarray, labels: np.ndarray, seed: int,
                  offset: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MultiFashion pairs: item A at (0, 0), a different item B at (o, o), max.

  Pair i uses images q[i] and q[i+1 mod N] of a seeded permutation q, so every
  image is used once as A and once as B, and A != B always.
  """
  n, h, w = images.shape
  q = np.random.default_rng(seed).permutation(n)
  a, b = q, np.roll(q, -1)
  canvas = np.zeros((n, h + offset, w + offset), images.dtype)
  canvas[:, :h, :w] = images[a]
  canvas[:, offset:, offset:] = np.maximum(canvas[:, offset:, offset:],
                                           images[b])
  return canvas[..., None], labels[a], labels[b]


@DATASETS.register("multifashion")
def multifashion(cfg) -> Dataset:
  """Two overlapped Fashion-MNIST items on a 36x36 canvas; tasks left, right."""
  raw = load_fashion_mnist(cfg.get("dir", ""))
  splits = {}
  for split, seed in (("train", 0), ("test", 1)):
    x, left, right = overlay_pairs(raw[f"{split}_x"], raw[f"{split}_y"], seed)
    splits[split] = make_split(x, {"left": left, "right": right})
  return Dataset("multifashion", splits["train"], splits["test"],
                 {"left": 10, "right": 10})


@DATASETS.register("npz")
def npz(cfg) -> Dataset:
  """A user's .npz: x_train, x_test, y_train_<task>, y_test_<task>.

  Optional keys: ids_train, ids_test (unique integer example ids; default
  0..N-1) and num_classes_<task> (default max label + 1 over both splits).
  """
  path = cfg.get("path", "")
  if not path:
    raise UserError("config.data.name='npz' needs --config.data.path=FILE.npz.")
  if not os.path.isfile(path):
    raise UserError(f"npz dataset file {path!r} does not exist. Fix "
                    "--config.data.path.")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except ValueError as e:
    raise UserError(f"Could not read {path!r} as an .npz of plain arrays "
                    f"({e}). Object arrays are not supported: save numeric "
                    "arrays with np.savez.") from None
  except (OSError, EOFError) as e:
    raise UserError(f"Could not read {path!r} as an .npz file: {e}") from None
  missing = [k for k in ("x_train", "x_test") if k not in arrays]
  tasks = sorted(k[len("y_train_"):] for k in arrays if k.startswith("y_train_"))
  if not tasks:
    missing.append("y_train_<task> (at least one task)")
  missing += [f"y_test_{t}" for t in tasks if f"y_test_{t}" not in arrays]
  if missing:
    raise UserError(
        f"npz dataset {path!r} is missing key(s) {', '.join(missing)}; it has "
        f"{', '.join(sorted(arrays)) or 'no arrays'}. Expected x_train, x_test "
        "and, for each task T, y_train_T and y_test_T.")
  for k, v in arrays.items():
    if k.startswith("y_") and not np.issubdtype(v.dtype, np.integer):
      raise UserError(f"npz key {k!r} has dtype {v.dtype}; labels must be "
                      "integers (-1 for a missing label).")
  num_classes = {}
  for t in tasks:
    key = f"num_classes_{t}"
    if key in arrays:
      num_classes[t] = int(arrays[key])
    else:
      num_classes[t] = int(max(arrays[f"y_train_{t}"].max(initial=-1),
                               arrays[f"y_test_{t}"].max(initial=-1))) + 1
  return Dataset(
      "npz",
      make_split(arrays["x_train"], {t: arrays[f"y_train_{t}"] for t in tasks},
             arrays.get("ids_train")),
      make_split(arrays["x_test"], {t: arrays[f"y_test_{t}"] for t in tasks},
             arrays.get("ids_test")),
      num_classes)


@DATASETS.register("digits")
def digits(cfg) -> Dataset:
  """sklearn's 8x8 digits (1797 images); tasks `digit` (10) and `parity` (2).

  A small, fast, two-task set for tests and smoke runs (the tasks are nested,
  so it is not a benchmark). Split: first 1400 of a seed-0 permutation train.
  """
  from sklearn.datasets import load_digits  # Optional dependency.
  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  y = d.target.astype(np.int32)
  p = np.random.default_rng(0).permutation(len(x))
  tr, te = p[:1400], p[1400:]
  return Dataset(
      "digits",
      make_split(x[tr], {"digit": y[tr], "parity": y[tr] % 2}),
      make_split(x[te], {"digit": y[te], "parity": y[te] % 2}),
      {"digit": 10, "parity": 2})


@DATASETS.register("digits_mixed")
def digits_mixed(cfg) -> Dataset:
  """sklearn digits with one task of each kind (tests and smoke runs):
  `digit` (10-way classification), `attributes` (3 binary labels: even,
  >= 5, has a closed loop {0, 4, 6, 8, 9}) and `ink` (regression: the
  image's mean intensity, standardised on train)."""
  base = digits(cfg)
  loops = np.isin(np.arange(10), [0, 4, 6, 8, 9])
  mean_ink = float(base.train.x.mean())
  std_ink = float(base.train.x.reshape(len(base.train), -1).mean(1).std())
  splits = []
  for split in (base.train, base.test):
    d = split.labels["digit"]
    attrs = np.stack([d % 2 == 0, d >= 5, loops[d]], 1).astype(np.int32)
    ink = (split.x.reshape(len(split), -1).mean(1, keepdims=True)
           - mean_ink) / std_ink
    splits.append(Split(split.x, {"digit": d, "attributes": attrs,
                                  "ink": ink.astype(np.float32)}, split.ids))
  return Dataset("digits_mixed", splits[0], splits[1],
                 {"digit": 10, "attributes": 3, "ink": 1},
                 {"attributes": "multilabel", "ink": "regression"})


def _synthetic_settings(cfg, defaults: dict) -> dict:
  """`defaults` updated by `cfg.synthetic`; an unknown key is an error."""
  given = dict(cfg.get("synthetic") or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise UserError(f"config.data.synthetic has unknown keys {unknown} for "
                    f"data.name={cfg.get('name')!r}. Fix: use only "
                    f"{sorted(defaults)}.")
  return {**defaults, **given}


@DATASETS.register("synthetic_images")
def synthetic_images(cfg) -> Dataset:
  """Generated, learnable images (tests, smoke runs and benchmarks of image
  models; never a benchmark of accuracy): each of `classes` classes is a
  fixed random pattern, an example its class's pattern under noise and a
  random brightness. Tasks `label` (classes) and `coarse` (label // 2).
  `cfg.synthetic` = {size, channels, classes, num_train, num_test}."""
  s = _synthetic_settings(cfg, dict(size=32, channels=3, classes=10,
                                    num_train=2048, num_test=512))
  rng = np.random.default_rng(0)
  patterns = rng.normal(size=(s["classes"], s["size"], s["size"],
                              s["channels"])).astype(np.float32)

  def split(n: int, seed: int) -> Split:
    r = np.random.default_rng(seed)
    y = r.integers(0, s["classes"], n).astype(np.int32)
    x = (patterns[y] * r.uniform(0.5, 1.5, (n, 1, 1, 1)) + r.normal(
        0, 1.5, (n, s["size"], s["size"], s["channels"]))) / 2  # std ~1.
    return make_split(x.astype(np.float32), {"label": y, "coarse": y // 2})
  return Dataset("synthetic_images", split(s["num_train"], 1),
                 split(s["num_test"], 2),
                 {"label": s["classes"], "coarse": (s["classes"] + 1) // 2})


@DATASETS.register("synthetic_text")
def synthetic_text(cfg) -> Dataset:
  """Generated token sequences (tests and smoke runs of text models): ids
  in [2, vocab) padded with 0 (PAD) to `length`; task `label`: which of 4
  marker tokens (2..5) the sequence holds most often, `long`: whether it is
  longer than half of `length`; with `cfg.lm_task` set, a sequence task of
  that name: the next token at each position (`datasets.next_tokens`).
  `cfg.synthetic` = {vocab, length, num_train, num_test}."""
  s = _synthetic_settings(cfg, dict(vocab=64, length=16, num_train=1024,
                                    num_test=256))
  lm_task = str(cfg.get("lm_task", "") or "")

  def split(n: int, seed: int) -> Split:
    r = np.random.default_rng(seed)
    lengths = r.integers(2, s["length"] + 1, n)
    ids = r.integers(2, s["vocab"], (n, s["length"]))
    ids[np.arange(s["length"])[None] >= lengths[:, None]] = 0
    counts = np.stack([(ids == t).sum(1) for t in (2, 3, 4, 5)], 1)
    labels = {"label": counts.argmax(1).astype(np.int32),
              "long": (lengths > s["length"] // 2).astype(np.int32)}
    if lm_task:
      labels[lm_task] = next_tokens(ids)
    return make_split(ids.astype(np.float32), labels)
  sizes = {"label": 4, "long": 2, **({lm_task: s["vocab"]} if lm_task else {})}
  return Dataset("synthetic_text", split(s["num_train"], 1),
                 split(s["num_test"], 2), sizes,
                 kinds={lm_task: "sequence"} if lm_task else {},
                 vocabulary=f"synthetic_text-{s['vocab']}" if lm_task else "",
                 vocab_size=s["vocab"])


@DATASETS.register("mnist1d")
def mnist1d(cfg) -> Dataset:
  """MNIST-1D generated procedurally (never downloaded); one task `digit`."""
  from mnist1d.data import get_dataset_args, make_dataset
  args = get_dataset_args()
  d = make_dataset(args)
  return Dataset(
      "mnist1d",
      make_split(d["x"].astype(np.float32), {"digit": d["y"]}),
      make_split(d["x_test"].astype(np.float32), {"digit": d["y_test"]}),
      {"digit": 10})
