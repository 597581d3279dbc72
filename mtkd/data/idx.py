"""Reader and writer for the IDX format (MNIST, Fashion-MNIST).

IDX layout (big-endian): two zero bytes, a type code, the number of
dimensions `d`, then `d` uint32 sizes, then the data in C order. Files may be
gzip-compressed (detected by magic bytes, not by name).
"""

import gzip
import os

import numpy as np

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


class IdxFormatError(ValueError):
  """The bytes are not a well-formed IDX file."""


def _read_bytes(path: str | os.PathLike) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  return data


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """Parses IDX bytes into an array in native byte order."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise IdxFormatError(f"{name}: not an IDX file (bad magic number).")
  code, ndim = data[2], data[3]
  if code not in _DTYPES:
    raise IdxFormatError(f"{name}: unknown IDX type code 0x{code:02x}.")
  header = 4 + 4 * ndim
  if len(data) < header:
    raise IdxFormatError(f"{name}: truncated header.")
  shape = tuple(int(s) for s in np.frombuffer(data, ">u4", ndim, 4))
  dtype = _DTYPES[code]
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise IdxFormatError(
        f"{name}: header says shape {shape} ({expected} bytes) but the file "
        f"has {len(data)} bytes; the file is truncated or corrupt.")
  arr = np.frombuffer(data, dtype, offset=header).reshape(shape)
  return arr.astype(dtype.newbyteorder("="))


def load_idx(path: str | os.PathLike) -> np.ndarray:
  """Loads a (possibly gzipped) IDX file."""
  return parse_idx(_read_bytes(path), name=os.fspath(path))


def save_idx(path: str | os.PathLike, array: np.ndarray,
             compress: bool = False) -> None:
  """Writes `array` as IDX; the inverse of `load_idx`."""
  array = np.asarray(array)
  code = _CODES.get(array.dtype.newbyteorder("="))
  if code is None:
    raise ValueError(f"IDX cannot store dtype {array.dtype}.")
  header = bytes([0, 0, code, array.ndim]) + np.asarray(
      array.shape, ">u4").tobytes()
  data = header + array.astype(_DTYPES[code]).tobytes()
  if compress:
    data = gzip.compress(data)
  with open(path, "wb") as f:
    f.write(data)
