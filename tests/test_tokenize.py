"""Text from a local tokenizer file (`config.data.tokenizer`): ids shifted
past PAD = 0, truncation, padding and the mask; the 'hf' source's text
fields end to end; a cache written under another tokenizer is refused."""

import json
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtkd.data import datasets, tokenize
from mtkd.errors import UserError

WORDS = ["good", "bad", "fun", "dull", "film", "plot", "very", "not"]


def _word_level(path, words=WORDS):
  """A tokenizer.json whose ids are known by hand: [UNK] 0, words 1.."""
  import tokenizers
  from tokenizers import models, pre_tokenizers
  vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(path))
  return str(path)


def _cfg(kind, path, max_len):
  return ml_collections.ConfigDict(dict(kind=kind, path=path,
                                        max_len=max_len))


def test_hf_tokenizers_ids_truncation_padding_and_mask(tmp_path):
  tok = tokenize.load(_cfg("hf_tokenizers", _word_level(tmp_path / "t.json"),
                           4))
  assert tok.vocab_size == len(WORDS) + 2  # [UNK], the words, PAD.
  ids, mask = tok.encode(["good film", "very very bad dull plot", "xyz fun",
                          ""])
  # Tokenizer ids + 1 (PAD = 0), cut at 4, right-padded.
  np.testing.assert_array_equal(ids, [[2, 6, 0, 0], [8, 8, 3, 5],
                                      [1, 4, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, ids != 0)
  assert ids.dtype == np.int32


def _sentencepiece(path):
  import sentencepiece as spm
  rng = np.random.default_rng(0)
  lines = [" ".join(rng.choice(WORDS, 6)) for _ in range(200)]
  with open(path, "wb") as f:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines),
                                   model_writer=f, vocab_size=24,
                                   model_type="unigram", minloglevel=2)
  return str(path)


def test_sentencepiece_round_trips(tmp_path):
  import sentencepiece as spm
  path = _sentencepiece(tmp_path / "sp.model")
  tok = tokenize.load(_cfg("sentencepiece", path, 12))
  assert tok.vocab_size == 25
  texts = ["good film", "not very dull plot plot fun bad good"]
  ids, mask = tok.encode(texts)
  sp = spm.SentencePieceProcessor(model_file=path)
  for row, m, text in zip(ids, mask, texts, strict=True):
    real = row[m] - 1  # Back to the tokenizer's ids: the (cut) text.
    full = sp.EncodeAsIds(text)
    assert real.tolist() == full[:12]
    assert not m[m.sum():].any()  # Padding only at the end.
  assert mask[0].sum() < 12 and mask[1].all()  # The second is cut.
  assert sp.DecodeIds((ids[0][mask[0]] - 1).tolist()) == texts[0]


def test_bad_tokenizer_settings_name_the_fix(tmp_path):
  with pytest.raises(UserError, match="config.data.tokenizer = "):
    tokenize.load(_cfg("", "", 8))
  with pytest.raises(UserError, match="does not exist"):
    tokenize.load(_cfg("sentencepiece", str(tmp_path / "none.model"), 8))
  with pytest.raises(UserError, match="max_len"):
    tokenize.load(_cfg("sentencepiece", str(tmp_path / "none.model"), 0))
  junk = tmp_path / "junk.model"
  junk.write_bytes(b"not a model")
  with pytest.raises(UserError, match="not a SentencePiece model"):
    tokenize.load(_cfg("sentencepiece", str(junk), 8))
  with pytest.raises(UserError, match="not a Hugging Face tokenizer"):
    tokenize.load(_cfg("hf_tokenizers", str(junk), 8))
  with pytest.raises(UserError, match="Unknown tokenizer"):
    tokenize.load(_cfg("bpe", str(junk), 8))


def _text_parquet(root, counts=(96, 32)):
  """Reviews whose label is whether "good" outnumbers "bad"."""
  os.makedirs(root)
  meta = {b"huggingface": json.dumps({"info": {"features": {
      "text": {"_type": "Value"},
      "label": {"_type": "ClassLabel", "names": ["neg", "pos"]}}}})}
  for split, n, seed in (("train", counts[0], 0), ("test", counts[1], 1)):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(3, 9)))
             for _ in range(n)]
    labels = [int(t.split().count("good") > t.split().count("bad"))
              for t in texts]
    pq.write_table(pa.table({"text": texts, "label": labels})
                   .replace_schema_metadata(meta),
                   os.path.join(root, f"{split}.parquet"))
  return root


def _text_config(root, tokenizer):
  from configs import quickstart
  c = quickstart.get_config("smoke")
  c.data.name, c.data.path, c.data.input_field = "hf", root, "text"
  c.data.tokenizer = dict(kind="hf_tokenizers", path=tokenizer, max_len=8)
  c.data.num_labeled = 48
  c.teacher.steps = c.student.steps = 10
  c.teacher.model = c.student.model = dict(
      name="bag_of_embeddings", vocab_size=len(WORDS) + 2, embed_dim=8,
      hidden=16)
  return c


def test_text_fields_end_to_end_and_vocabulary_checks(tmp_path, run_mtkd):
  root = _text_parquet(str(tmp_path / "pq"))
  vocab_file = _word_level(tmp_path / "t.json")
  c = _text_config(root, vocab_file)
  ds = datasets.build(c.data)
  assert ds.num_classes == {"label": 2} and ds.input_shape == (8,)
  assert ds.vocab_size == len(WORDS) + 2
  text = pq.read_table(os.path.join(root, "train.parquet"))["text"][0]
  want, _ = tokenize.load(c.data.tokenizer).encode([text.as_py()])
  np.testing.assert_array_equal(ds.train.x[0], want[0])
  results = run_mtkd(c, tmp_path / "w")
  assert {"teacher", "baseline", "student"} <= set(results["label"])
  meta = json.load(open(tmp_path / "w" / "cache" / "label" / "train" /
                        "metadata.json"))
  assert meta["vocabulary"] == ds.vocabulary
  # Another vocabulary over the same workdir: the stages refuse to resume,
  # and when told to go on anyway, the cache is still refused.
  c2 = _text_config(root, _word_level(tmp_path / "t2.json", WORDS[::-1]))
  with pytest.raises(UserError, match="dataset_fingerprint"):
    run_mtkd(c2, tmp_path / "w")
  with pytest.raises(UserError, match="vocabulary is .* another tokenizer"):
    run_mtkd(c2, tmp_path / "w", allow_config_change=True)
  # A model table smaller than the tokenizer's: refused before training.
  c3 = _text_config(root, vocab_file)
  c3.student.model.vocab_size = 5
  with pytest.raises(UserError, match="vocab_size=10"):
    run_mtkd(c3, tmp_path / "w3")


def test_text_datasets_default_to_their_text_field(tmp_path):
  """`input_field` left at its default reads `text` when the data has no
  `image` field."""
  root = _text_parquet(str(tmp_path / "pq"))
  cfg = ml_collections.ConfigDict(dict(
      name="hf", path=root, input_field="image", tokenizer=dict(
          kind="hf_tokenizers", path=_word_level(tmp_path / "t.json"),
          max_len=8)))
  ds = datasets.build(cfg)
  assert ds.input_shape == (8,) and ds.vocab_size == len(WORDS) + 2


def test_text_pairs_use_the_pair_template_and_cut_longest_first(tmp_path):
  import tokenizers
  from tokenizers import processors
  path = _word_level(tmp_path / "t.json", WORDS + ["[SEP]"])
  tok = tokenizers.Tokenizer.from_file(path)
  sep = tok.token_to_id("[SEP]")  # 9: [UNK] 0, WORDS 1..8.
  tok.post_processor = processors.TemplateProcessing(
      single="$A", pair="$A [SEP] $B", special_tokens=[("[SEP]", sep)])
  tok.save(path)
  t = tokenize.load(_cfg("hf_tokenizers", path, 6))
  ids, mask = t.encode(["good film", "very very very very bad"],
                       ["bad plot", "fun"])
  # good film [SEP] bad plot, shifted past PAD; the second pair is 7 tokens
  # long: its longer text loses its last token ("bad").
  np.testing.assert_array_equal(ids, [[2, 6, 10, 3, 7, 0],
                                      [8, 8, 8, 8, 10, 4]])
  np.testing.assert_array_equal(mask, ids != 0)


def test_sentencepiece_pairs_are_joined_by_its_end_id(tmp_path):
  import sentencepiece as spm
  path = _sentencepiece(tmp_path / "sp.model")
  sp = spm.SentencePieceProcessor(model_file=path)
  t = tokenize.load(_cfg("sentencepiece", path, 64))
  ids, _ = t.encode(["good film"], ["bad plot"])
  want = sp.EncodeAsIds("good film") + [sp.eos_id()] + sp.EncodeAsIds(
      "bad plot")
  assert ids[0][ids[0] != 0].tolist() == [i + 1 for i in want]
  short = tokenize.load(_cfg("sentencepiece", path, 5))
  ids, _ = short.encode(["good film very dull plot"], ["fun"])
  assert (ids[0] != 0).sum() == 5  # Cut longest-first to max_len.
