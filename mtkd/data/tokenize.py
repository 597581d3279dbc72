"""Text to token ids with a tokenizer read from a local file.

`config.data.tokenizer = dict(kind, path, max_len)`:
  kind  'hf_tokenizers': a Hugging Face `tokenizer.json` (the `tokenizers`
        package); 'sentencepiece': a SentencePiece `.model` file.
  path  the local file (nothing is downloaded).
  max_len  tokens kept per text (longer texts are truncated at the end;
           a text pair is cut longest-first, as `tokenizers` does).

Ids follow mtkd's text convention (mtkd/models/text.py): 0 is PAD, so the
tokenizer's id t becomes t + 1 and `vocab_size` is the tokenizer's size + 1.
The mask is `ids != 0`. Text pairs (GLUE's sentence1 / sentence2) are
encoded by the tokenizer's own pair template (`tokenizer.json`'s
post-processor, e.g. BERT's [CLS] a [SEP] b [SEP]); SentencePiece, which
has none, joins them with its end-of-sentence id when it has one. The vocabulary fingerprint is the hash of the file's
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
# kind -> loader(path) -> (encode(texts, pairs | None, max_len) -> id lists,
# tokenizer size).
TOKENIZERS: Registry[Callable[[str], tuple[Callable, int]]] = Registry(
    "tokenizer")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  kind: str
  path: str
  max_len: int
  vocab_size: int  # Table size, PAD included.
  fingerprint: str
  _encode: Callable[..., list[list[int]]]

  def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(int32 ids [N, max_len], bool mask [N, max_len]) of the texts (or
    text pairs): truncated, then right-padded with PAD."""
    out = np.zeros((len(texts), self.max_len), np.int32)
    pairs = None if pairs is None else list(pairs)
    for i, ids in enumerate(self._encode(list(texts), pairs, self.max_len)):
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

  def encode(texts, pairs, max_len):
    tok.enable_truncation(max_len, strategy="longest_first")
    inputs = texts if pairs is None else list(zip(texts, pairs, strict=True))
    return [e.ids for e in tok.encode_batch(inputs)]
  return encode, tok.get_vocab_size()


@TOKENIZERS.register("sentencepiece")
def _sentencepiece(path: str):
  import sentencepiece
  sp = sentencepiece.SentencePieceProcessor()
  try:
    sp.Load(path)
  except (OSError, RuntimeError) as e:
    raise UserError(f"{path!r} is not a SentencePiece model file "
                    f"({e}).") from None
  sep = [sp.eos_id()] if sp.eos_id() >= 0 else []

  def encode(texts, pairs, max_len):
    if pairs is None:
      return sp.EncodeAsIds(texts)
    out = []
    for a, b in zip(sp.EncodeAsIds(texts), sp.EncodeAsIds(pairs),
                    strict=True):
      while len(a) + len(b) + len(sep) > max_len and (a or b):
        a, b = (a[:-1], b) if len(a) >= len(b) else (a, b[:-1])
      out.append(a + sep + b)
    return out
  return encode, sp.GetPieceSize()


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
