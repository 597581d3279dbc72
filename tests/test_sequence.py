"""Sequence tasks: per-token terms and metrics against numpy references,
the causal LM's invariants, per-token sparse caches, pmap = jit, and the
lm_kd config end to end (verify, exact resume)."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtkd import models
from mtkd.data import datasets, streams
from mtkd.errors import UserError
from mtkd.methods import objectives, tasks
from mtkd.methods.objectives import Context, TaskSpec
from mtkd.store import cache, sparse
from mtkd.train import optim, placement, sharding
from mtkd.train import step as step_lib

SEQ = TaskSpec("lm", 7, temperature=2.0, alpha=0.3, kind="sequence")
CLS = TaskSpec("c", 3, temperature=4.0, alpha=0.5)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _seq_batch(rng, b=4, length=5, v=7, k=1):
  labels = rng.integers(0, v, (b, length)).astype(np.int32)
  labels[0, 3:] = -1  # Padding after a short text.
  labels[2, :] = -1   # An empty text: no tokens at all.
  return dict(
      labels={"lm": labels, "c": np.array([1, -1, 0, 2], np.int32)[:b]},
      mask=np.array([1, 1, 1, 0], np.float32)[:b],  # Row 3 is batch padding.
      teacher={"lm": rng.normal(size=(b, k, length, v)).astype(np.float32),
               "c": rng.normal(size=(b, k, 3)).astype(np.float32)})


def test_distill_sums_and_counts_real_tokens():
  """Per token: alpha T^2 KL + (1 - alpha) CE over the real tokens of real
  rows only; the term is (sum, number of those tokens)."""
  rng = np.random.default_rng(0)
  batch = _seq_batch(rng)
  logits = rng.normal(size=(4, 5, 7)).astype(np.float32)
  out = {"logits": {"lm": jnp.asarray(logits),
                    "c": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}}
  terms, metrics = objectives.OBJECTIVES.get("distill")()(
      out, jax.tree.map(jnp.asarray, batch), (SEQ, CLS),
      Context(jnp.int32(0), 10))
  t, a = SEQ.temperature, SEQ.alpha
  total, count, correct = 0.0, 0, 0
  for i in range(4):
    for j in range(5):
      y = batch["labels"]["lm"][i, j]
      if batch["mask"][i] == 0 or y < 0:
        continue
      lt = _log_softmax(batch["teacher"]["lm"][i, 0, j] / t)
      ls = _log_softmax(logits[i, j] / t)
      kl = np.sum(np.exp(lt) * (lt - ls))
      ce = -_log_softmax(logits[i, j])[y]
      total += a * t * t * kl + (1 - a) * ce
      count += 1
      correct += int(logits[i, j].argmax() == y)
  assert count == 3 + 5  # Row 0: 3 tokens, row 1: 5; rows 2, 3: none.
  np.testing.assert_allclose(terms["lm"][0], total, rtol=1e-5)
  assert float(terms["lm"][1]) == count
  np.testing.assert_allclose(metrics["lm/accuracy"], (correct, count))
  assert float(terms["c"][1]) == 3  # The classification task: per row.


def test_evaluate_reports_per_token_metrics():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 6, (5, 4)).astype(np.int32)
  labels[1, 2:] = -1
  labels[4] = -1
  logits, teacher = rng.normal(size=(2, 5, 4, 6))
  spec = TaskSpec("lm", 6, temperature=2.0, kind="sequence")
  got = tasks.evaluate(spec, logits, labels, teacher)
  keep = labels >= 0
  lp = _log_softmax(logits)[keep]
  y = labels[keep]
  nll = -lp[np.arange(len(y)), y].mean()
  assert got["count"] == keep.sum() == 14
  np.testing.assert_allclose(got["loss"], nll)
  np.testing.assert_allclose(got["perplexity"], np.exp(nll))
  np.testing.assert_allclose(got["accuracy"],
                             np.mean(logits[keep].argmax(-1) == y))
  np.testing.assert_allclose(got["agreement"], np.mean(
      logits[keep].argmax(-1) == teacher[keep].argmax(-1)))
  lt, ls = _log_softmax(teacher[keep] / 2), _log_softmax(logits[keep] / 2)
  np.testing.assert_allclose(got["kl"], np.mean(np.sum(
      np.exp(lt) * (lt - ls), -1)))
  # Summed over chunks of tokens (memory), the same numbers.
  chunked = tasks._evaluate_tokens(spec, logits, labels, teacher, chunk=3)
  assert chunked == pytest.approx(got, rel=1e-12)


def _lm(**kw):
  cfg = dict(name="causal_lm", vocab_size=20, max_len=8, dim=16, depth=2,
             heads=2)
  return models.build(dict(cfg, **kw), {"lm": 20, "c": 3},
                      {"lm": "sequence"})


def test_causal_lm_reads_only_the_past_and_ignores_padding():
  model = _lm()
  x = np.array([[5, 6, 7, 8, 9, 0, 0, 0], [3, 4, 0, 0, 0, 0, 0, 0]],
               np.float32)
  variables = model.init(jax.random.key(0), x)
  out = model.apply(variables, x)
  assert out["lm"].shape == (2, 8, 20) and out["c"].shape == (2, 3)
  later = x.copy()
  later[0, 3] = 11  # Changes position 3: positions 0..2 must not move.
  moved = model.apply(variables, later)["lm"]
  np.testing.assert_array_equal(moved[0, :3], out["lm"][0, :3])
  assert not np.allclose(moved[0, 3], out["lm"][0, 3])
  # Fewer PAD slots: the same real positions and the same features.
  short = model.apply(variables, x[:, :5])
  np.testing.assert_allclose(short["lm"], out["lm"][:, :5], atol=1e-5)
  np.testing.assert_allclose(short["c"], out["c"], atol=1e-5)
  # The classification heads read the last real position's state.
  _, blocks = model.apply(variables, x, with_features=True)
  np.testing.assert_allclose(blocks["representation"][1],
                             blocks["tokens"][1, 1], atol=1e-6)


def test_a_sequence_task_needs_a_per_position_trunk():
  model = models.build(dict(name="bag_of_embeddings", vocab_size=20),
                       {"lm": 20}, {"lm": "sequence"})
  with pytest.raises(UserError, match="causal_lm"):
    model.init(jax.random.key(0), np.ones((1, 4), np.float32))


@pytest.mark.parametrize("tail", ["uniform", "bucket", "sampled"])
def test_sequence_cache_stores_each_token_as_a_row(tmp_path, tail):
  """An [n, L, V] array is stored per token: what a read gives equals the
  2-D storage of the flattened tokens (sampled: with token ids
  id * L + t), and the metadata records L."""
  rng = np.random.default_rng(2)
  n, length, v, k = 10, 3, 12, 4
  ids = np.arange(100, 100 + n)
  logits = (rng.normal(size=(n, length, v)) * 3).astype(np.float32)
  temps = {"lm": [2.0]}
  cache.build(str(tmp_path), n, 4, lambda a, b: (ids[a:b], {"lm": logits[a:b]}),
              {"teacher": "t"}, "float32", top_k=k, top_k_names=["lm"],
              tail=tail, temperatures=None if tail == "uniform" else temps)
  c = cache.LogitCache(str(tmp_path), {"teacher": "t"})
  assert c.meta["positions"] == {"lm": length}
  flat = logits.reshape(n * length, v)
  tokens = (ids[:, None] * length + np.arange(length)).reshape(-1)
  parts = sparse.compress(flat, tokens, k, tail,
                          temps["lm"] if tail != "uniform" else ())
  order = rng.permutation(n)
  dense = c.lookup(ids[order])["lm"]
  assert dense.shape == (n, length, v)
  want = sparse.dense(tail, parts, v, 2.0).reshape(n, length, v)[order]
  np.testing.assert_array_equal(dense, want)
  if tail != "uniform":
    rows = c.teacher_rows(ids[order], {"lm": 2.0})["lm"]
    ref = sparse.record(tail, parts, 0, 2.0)
    for key in ("values", "indices", "tail"):
      assert rows[key].shape[:2] == (n, length)
      np.testing.assert_array_equal(
          rows[key], ref[key].reshape(n, length, *ref[key].shape[1:])[order])


def test_cache_refuses_another_vocabulary(tmp_path):
  cache.build(str(tmp_path), 2, 2, lambda a, b: (
      np.arange(a, b), {"lm": np.zeros((b - a, 3, 5), np.float32)}),
              {"teacher": "t", "vocabulary": "abc"}, "float32")
  with pytest.raises(UserError, match="another tokenizer's vocabulary"):
    cache.LogitCache(str(tmp_path), {"teacher": "t", "vocabulary": "xyz"})


def test_next_tokens_and_sequence_label_checks():
  x = np.array([[4, 5, 6, 0], [7, 0, 0, 0]])
  np.testing.assert_array_equal(datasets.next_tokens(x),
                                [[5, 6, -1, -1], [-1, -1, -1, -1]])
  split = datasets.make_split(x.astype(np.float32),
                              {"lm": np.array([[5, 9, -1, -1]] * 2)})
  ds = datasets.Dataset("d", split, split, {"lm": 8}, kinds={"lm": "sequence"})
  with pytest.raises(UserError, match=r"outside \[0, 8\)"):
    datasets.validate(ds, "test")
  bad = dataclasses.replace(split, labels={"lm": np.array([5, 6])})
  with pytest.raises(UserError, match=r"integer labels of shape \(2, L\)"):
    datasets.validate(dataclasses.replace(ds, train=bad), "test")


def _data(lm="lm"):
  return datasets.build(ml_collections.ConfigDict(dict(
      name="synthetic_text", lm_task=lm, synthetic=dict(
          vocab=20, length=8, num_train=64, num_test=16))))


def _run(place, ds, specs, sparse_teacher):
  model = models.build(dict(name="causal_lm", vocab_size=20, max_len=8,
                            dim=16, depth=1, heads=2),
                       {s.name: s.num_classes for s in specs}, ds.kinds)
  net = models.Net(model)
  # SGD, not Adam: the key bias's gradient is exactly 0 in theory (softmax
  # is shift-invariant), and Adam would blow its rounding noise up to lr.
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.5)))
  state = place.init(step_lib.make_init(net, tx, (8,)), jax.random.key(0))
  step = place.compile(lambda axis: step_lib.make_train_step(
      net, tx, objectives.OBJECTIVES.get("distill")(), specs,
      axis_name=axis), state)
  state = place.to_device(state)
  rng = np.random.default_rng(3)
  for i in range(3):
    b = streams.Gather(ds.train, ds.train.labels)(np.arange(16) + 16 * i)
    b["teacher"] = {"label": rng.normal(size=(16, 1, 4)).astype(np.float32)}
    if sparse_teacher:  # Bucket-mode top-3 per token.
      b["teacher"]["lm"] = {
          "values": rng.normal(size=(16, 1, 8, 3)).astype(np.float32),
          "indices": rng.integers(0, 20, (16, 1, 8, 3)).astype(np.int32),
          "tail": rng.uniform(0.05, 0.5, (16, 1, 8)).astype(np.float32)}
      b["teacher"]["lm"]["indices"][..., 1] = (
          b["teacher"]["lm"]["indices"][..., 0] + 1) % 20  # Distinct.
      b["teacher"]["lm"]["indices"][..., 2] = (
          b["teacher"]["lm"]["indices"][..., 0] + 2) % 20
    else:
      b["teacher"]["lm"] = rng.normal(size=(16, 1, 8, 20)).astype(np.float32)
    state, metrics = step(state, place.put_batch(b), jax.random.key(1))
  return (place.from_device(state),
          step_lib.metric_means(place.metrics_to_host(metrics)))


@pytest.mark.parametrize("sparse_teacher", [False, True])
def test_sequence_task_pmap_matches_jit(sparse_teacher):
  """Rows hold different numbers of tokens, so only exact global (sum,
  count) reductions make 8 devices' pmap agree with one device's jit."""
  ds = _data()
  specs = (TaskSpec("label", 4), TaskSpec("lm", 20, temperature=2.0,
                                          kind="sequence"))
  mesh = sharding.make_mesh((("data", -1),), jax.devices()[:1])
  s1, m1 = _run(placement.Jit(mesh), ds, specs, sparse_teacher)
  s8, m8 = _run(placement.Pmap(sharding.make_mesh(
      (("data", -1),), jax.devices()[:8])), ds, specs, sparse_teacher)
  for a, b in zip(jax.tree.leaves(jax.device_get(s1)),
                  jax.tree.leaves(jax.device_get(s8)), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for key in m1:
    np.testing.assert_allclose(m1[key], m8[key], rtol=2e-5, atol=2e-6,
                               err_msg=key)


def test_lm_kd_smoke_verifies_and_resumes_exactly(tmp_path, run_mtkd,
                                                 resumes_exactly):
  """configs/lm_kd.py:smoke: an LM task and two classification tasks, each
  from its own teacher, a per-token sampled cache; `--verify` re-derives it
  and a student resumed mid-run ends bit-identical."""
  from configs import lm_kd
  from mtkd.stages import verify

  c = lm_kd.get_config("smoke")
  w = tmp_path / "run"
  results = run_mtkd(c, w)
  lm = results["next_word"]
  assert lm["student"]["count"] == lm["teacher"]["count"] > 128
  assert lm["student"]["perplexity"] == pytest.approx(
      np.exp(lm["student"]["loss"]))
  meta = cache.read_metadata(str(w / "cache" / "next_word-bfloat16-top4-"
                                 "sampled-T2" / "train"))
  assert meta["positions"] == {"next_word": 12}
  assert meta["vocabulary"] == "synthetic_text-64"
  assert verify.verify_workdir(c, str(w)) == []
  resumes_exactly(c, w)


def test_cache_shards_that_would_not_fit_in_memory_are_refused(
    tmp_path, run_mtkd, monkeypatch):
  from configs import lm_kd
  from mtkd.stages import plan
  c = lm_kd.get_config("smoke")  # 64 words x 12 positions x 4 B = 3 KiB.
  monkeypatch.setattr(plan, "SHARD_BYTES", 100 * 3200)
  with pytest.raises(UserError, match=r"shard_size <= \d+"):
    run_mtkd(c, tmp_path / "w")
