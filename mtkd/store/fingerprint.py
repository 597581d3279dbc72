"""Content hashes of pytrees, used to tie caches and checkpoints to the
exact parameters that produced them."""

import hashlib

import jax
import numpy as np


def fully_addressable(tree) -> bool:
  return all(getattr(x, "is_fully_addressable", True)
             for x in jax.tree.leaves(tree))


def tree_fingerprint(tree) -> str:
  """sha256 over every leaf's path, dtype, shape and bytes (host copy).

  Paths are written as `a/b/0` and sorted, so a state and its raw restore
  (dataclass fields and named tuples come back as dicts) hash alike.
  """
  leaves = sorted(
      (jax.tree_util.keystr(path, simple=True, separator="/"), leaf)
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])
  h = hashlib.sha256()
  for path, leaf in leaves:
    arr = np.asarray(leaf)
    h.update(f"{path}:{arr.dtype.str}:{arr.shape};".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:32]
