"""Generated stand-ins for public datasets, in their real on-disk schemas.

Smoke runs of the dataset configs (configs/cifar100_mtl.py, celeba.py,
glue_mix.py) run here, offline: `config.data.standin = KIND` makes
`datasets.build` write the stand-in once (if absent) and then read it
through the real source, so CI exercises the real code path.

  cifar100  TFDS `mtkd_standin_cifar100` in ArrayRecord, CIFAR-100's
            features: `id` (text), `image` 32x32x3, `label` (100 classes),
            `coarse_label` (20)
  celeb_a   TFDS `mtkd_standin_celeb_a`: `image` 36x30x3 (CelebA's aspect),
            `attributes` (CelebA's 40 boolean attributes, nested)
  glue      Hugging Face Parquet in GLUE's layout, `sst2/` and `cola/`
            (`sentence`, `label` ClassLabel, `idx`) and the sentence-pair
            `mrpc/` (`sentence1`, `sentence2`, ...), plus a word-level
            `tokenizer.json` whose pair template is `a [SEP] b`

Labels are learnable functions of the inputs (so a smoke run's teacher
beats chance). Everything is a pure function of the kind: files are
written to a temporary folder and renamed, under a lock, so concurrent
runs agree. Root: `$MTKD_STANDIN_DIR`, else `<tmp>/mtkd-standin`.
"""

import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np

from mtkd.errors import UserError

VERSION = 2  # Bump when a generator changes: old folders are not reused.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes",
    "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young")
WORDS = ("the", "a", "film", "plot", "cast", "story", "good", "bad", "great",
         "dull", "fun", "boring", "very", "not", "is", "was", "and", "but")
SIZES = {"train": 512, "test": 128}
GLUE_TOKENIZER_SIZE = len(WORDS) + 2  # [UNK], the words, [SEP].


def path(kind: str) -> str:
  """The folder the stand-in of `kind` is (or will be) in."""
  root = os.environ.get("MTKD_STANDIN_DIR") or os.path.join(
      tempfile.gettempdir(), "mtkd-standin")
  return os.path.join(os.path.expanduser(root), f"{kind}-v{VERSION}")


def _png(x: np.ndarray) -> io.BytesIO:
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(x).save(buf, format="PNG")
  buf.seek(0)
  return buf


def _cifar_rows(split: str):
  rng = np.random.default_rng(SIZES[split])
  for i in range(SIZES[split]):
    fine = int(rng.integers(0, 100))
    # The fine class sets the mean colour: 100 distinct (r, g, b) levels.
    base = np.array([fine % 5, fine // 5 % 5, fine // 25], np.uint8) * 50
    x = base + rng.integers(0, 30, (32, 32, 3)).astype(np.uint8)
    yield f"{split}_{i:05d}", {"id": f"{split}_{i:05d}", "image": _png(x),
                               "label": fine, "coarse_label": fine // 5}


def _celeba_rows(split: str):
  rng = np.random.default_rng(10 + SIZES[split])
  for i in range(SIZES[split]):
    on = rng.random(40) < 0.5
    # Attribute j lights up cell j of a 5 x 8 grid of 7 x 4 (+ noise).
    x = rng.integers(0, 60, (36, 30, 3)).astype(np.uint8)
    for j in np.flatnonzero(on):
      r, c = divmod(int(j), 8)
      x[1 + 7 * r:7 + 7 * r, 1 + 4 * c - (c > 6):4 + 4 * c - (c > 6)] += 150
    yield i, {"image": _png(x), "attributes": {
        a: bool(v) for a, v in zip(CELEBA_ATTRIBUTES, on, strict=True)}}


_BUILDERS: dict = {}  # TFDS registers a builder class once per process.


def _tfds_builder(kind: str, features: dict, rows: Callable, splits):
  import tensorflow_datasets as tfds
  if kind in _BUILDERS:
    return _BUILDERS[kind]

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(s) for s in splits}

  def _generate_examples(self, split):
    yield from rows(split)

  # Named MtkdStandin<Kind>: TFDS registers it as mtkd_standin_<kind>.
  name = "MtkdStandin" + kind.replace("_", " ").title().replace(" ", "")
  _BUILDERS[kind] = type(name, (tfds.core.GeneratorBasedBuilder,), dict(
      VERSION=tfds.core.Version("1.0.0"), _info=_info,
      _split_generators=_split_generators,
      _generate_examples=_generate_examples))
  return _BUILDERS[kind]


def _write_tfds(kind: str, out: str) -> None:
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  f = tfds.features
  if kind == "cifar100":
    features = {"id": f.Text(), "image": f.Image(shape=(32, 32, 3)),
                "label": f.ClassLabel(num_classes=100),
                "coarse_label": f.ClassLabel(num_classes=20)}
    rows, splits = _cifar_rows, ("train", "test")
  else:
    features = {"image": f.Image(shape=(36, 30, 3)), "attributes":
                f.FeaturesDict({a: f.Scalar(np.bool_)
                                for a in CELEBA_ATTRIBUTES})}
    rows, splits = _celeba_rows, ("train", "test")
  builder = _tfds_builder(kind, features, rows, splits)
  builder(data_dir=out, file_format="array_record").download_and_prepare()


def _sentences(split: str, task: str):
  rng = np.random.default_rng([SIZES[split], {"sst2": 1, "cola": 2,
                                              "mrpc": 3}[task]])
  for i in range(SIZES[split]):
    words = list(rng.choice(WORDS, int(rng.integers(3, 10))))
    if task == "mrpc":  # Paraphrase: the same words, reordered.
      label = int(rng.random() < 0.5)
      other = (list(rng.permutation(words)) if label else
               list(rng.choice(WORDS, int(rng.integers(3, 10)))))
      yield i, (" ".join(words), " ".join(other)), label
      continue
    if task == "sst2":  # Positive: more praise than blame.
      praise = sum(w in ("good", "great", "fun") for w in words)
      blame = sum(w in ("bad", "dull", "boring") for w in words)
      label = int(praise > blame)
    else:  # Acceptable: starts with an article and has a verb.
      label = int(words[0] in ("the", "a") and bool({"is", "was"} &
                                                    set(words)))
    yield i, " ".join(words), label


def _write_glue(out: str) -> None:
  import pyarrow as pa
  import pyarrow.parquet as pq
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  names = {"sst2": ["negative", "positive"],
           "cola": ["unacceptable", "acceptable"],
           "mrpc": ["not_equivalent", "equivalent"]}
  text = {"_type": "Value", "dtype": "string"}
  for task, classes in names.items():
    os.makedirs(os.path.join(out, task))
    fields = ["sentence"] if task != "mrpc" else ["sentence1", "sentence2"]
    meta = {b"huggingface": json.dumps({"info": {"features": {
        **{f: text for f in fields},
        "label": {"_type": "ClassLabel", "names": classes},
        "idx": {"_type": "Value", "dtype": "int32"}}}})}
    for split in SIZES:
      idx, texts, label = zip(*_sentences(split, task), strict=True)
      cols = ({"sentence": list(texts)} if task != "mrpc" else
              {"sentence1": [a for a, _ in texts],
               "sentence2": [b for _, b in texts]})
      table = pa.table({**cols, "label": list(label),
                        "idx": np.asarray(idx, np.int32)})
      pq.write_table(table.replace_schema_metadata(meta),
                     os.path.join(out, task, f"{split}.parquet"))
  vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)},
           "[SEP]": len(WORDS) + 1}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(
      single="$A", pair="$A [SEP] $B", special_tokens=[
          ("[SEP]", len(WORDS) + 1)])
  tok.save(os.path.join(out, "tokenizer.json"))


WRITERS = {"cifar100": lambda out: _write_tfds("cifar100", out),
           "celeb_a": lambda out: _write_tfds("celeb_a", out),
           "glue": _write_glue}


def prepare(kind: str) -> str:
  """Writes the stand-in of `kind` unless it is there; returns its path."""
  if kind not in WRITERS:
    raise UserError(f"config.data.standin is {kind!r}; known stand-ins: "
                    f"{sorted(WRITERS)}.")
  final = path(kind)
  if os.path.isfile(os.path.join(final, "DONE")):
    return final
  os.makedirs(os.path.dirname(final), exist_ok=True)
  with open(f"{final}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.isfile(os.path.join(final, "DONE")):
      tmp = tempfile.mkdtemp(prefix=f"{kind}.", dir=os.path.dirname(final))
      try:
        WRITERS[kind](tmp)
        open(os.path.join(tmp, "DONE"), "w").close()
        shutil.rmtree(final, ignore_errors=True)  # An unfinished one.
        os.replace(tmp, final)
      finally:
        shutil.rmtree(tmp, ignore_errors=True)
  return final
