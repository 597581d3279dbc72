"""Text to token ids with a tokenizer read from a local file.

`config.data.tokenizer = dict(kind, path, max_len)`:
  kind  'hf_tokenizers': a Hugging Face `tokenizer.json` (the `tokenizers`
        package); 'sentencepiece': a SentencePiece `.model` file.
  path  the local file (nothing is downloaded).
  max_len  tokens kept per text (longer texts are truncated at the end).

Ids follow mtkd's text convention (mtkd/models/text.py): 0 is PAD, so the
tokenizer's id t becomes t + 1 and `vocab_size` is the tokenizer's size + 1.
The mask is `ids != 0`. The vocabulary fingerprint is the hash of the file's
bytes with its kind: caches record it, so a teacher cache written with one
tokenizer is refused under another (token ids would not line up).
"""

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

from mtkd.errors import UserError
from mtkd.registry import Registry

PAD = 0
# kind -> loader(path) -> (encode texts -> id lists, tokenizer size).
TOKENIZERS: Registry[Callable[[str], tuple[Callable, int]]] = Registry(
    "tokenizer")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  kind: str
  path: str
  max_len: int
  vocab_size: int  # Table size, PAD included.
  fingerprint: str
  _encode: Callable[[Sequence[str]], list[list[int]]]

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(int32 ids [N, max_len], bool mask [N, max_len]): truncated, then
    right-padded with PAD."""
    out = np.zeros((len(texts), self.max_len), np.int32)
    for i, ids in enumerate(self._encode(list(texts))):
      ids = ids[:self.max_len]
      out[i, :len(ids)] = np.asarray(ids, np.int64) + 1
    return out, out != PAD


@TOKENIZERS.register("hf_tokenizers")
def _hf(path: str):
  import tokenizers
  try:
    tok = tokenizers.Tokenizer.from_file(path)
  except Exception as e:  # noqa: BLE001 - the library raises bare Exceptions.
    raise UserError(f"{path!r} is not a Hugging Face tokenizer.json file "
                    f"({e}).") from None
  tok.no_padding()
  tok.no_truncation()
  return (lambda texts: [e.ids for e in tok.encode_batch(texts)],
          tok.get_vocab_size())


@TOKENIZERS.register("sentencepiece")
def _sentencepiece(path: str):
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor()
  try:
    sp.Load(path)
  except (OSError, RuntimeError) as e:
    raise UserError(f"{path!r} is not a SentencePiece model file "
                    f"({e}).") from None
  return (lambda texts: sp.EncodeAsIds(texts), sp.GetPieceSize())


def load(cfg) -> Tokenizer:
  """The tokenizer `config.data.tokenizer` names (module docstring)."""
  kind, path = cfg.get("kind", ""), os.path.expanduser(cfg.get("path", ""))
  max_len = int(cfg.get("max_len", 0))
  if not kind or not path:
    raise UserError(
        "Text fields need a tokenizer: set config.data.tokenizer = "
        "{kind: 'hf_tokenizers' | 'sentencepiece', path: FILE, max_len: L}, "
        "FILE a local tokenizer.json or .model file (prepare it on a "
        "machine with internet, e.g. AutoTokenizer.from_pretrained(NAME)."
        "save_pretrained(DIR)).")
  if max_len < 1:
    raise UserError(f"config.data.tokenizer.max_len must be >= 1, got "
                    f"{max_len}.")
  if not os.path.isfile(path):
    raise UserError(f"Tokenizer file {path!r} does not exist; fix "
                    "config.data.tokenizer.path.")
  loader = TOKENIZERS.get(kind)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()[:16]
  encode, size = loader(path)
  return Tokenizer(kind, path, max_len, size + 1, f"{kind}-{digest}", encode)
