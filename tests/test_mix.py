"""Mixed datasets (`config.data.name='mix'`): disjoint tasks from several
datasets, each example labelled for its own source's tasks only, unique
ids, per-source sampling (proportional, uniform, temperature) that is
seeded and resumable, and a pipeline run end to end."""

import ml_collections
import numpy as np
import pytest

from mtkd.data import datasets, mix, streams
from mtkd.errors import UserError

DIGITS = dict(name="digits")
IMAGES = dict(name="synthetic_images", synthetic=dict(
    size=8, channels=1, classes=4, num_train=300, num_test=100))


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(
      dict(name="mix", sources={"a_digits": DIGITS, "b_images": IMAGES}),
      **kw))


def test_sources_become_disjoint_tasks_with_unique_ids():
  ds = datasets.build(_cfg())
  d = datasets.build(ml_collections.ConfigDict(DIGITS))
  n = len(d.train)
  assert set(ds.tasks) == {"digit", "parity", "label", "coarse"}
  assert len(ds.train) == n + 300 and ds.input_shape == (8, 8, 1)
  y = ds.train.labels
  assert (y["digit"][n:] == -1).all() and (y["label"][:n] == -1).all()
  np.testing.assert_array_equal(y["digit"][:n], d.train.labels["digit"])
  np.testing.assert_array_equal(ds.train.ids[:n], d.train.ids)
  assert (ds.train.ids[n:] >= 1 << mix.ID_BITS).all()
  assert ds.train.weights is None  # Proportional: a plain shuffle.


@pytest.mark.parametrize("sampling,temperature", [("uniform", 1.0),
                                                   ("temperature", 2.0)])
def test_sampling_draws_sources_in_the_chosen_proportions(sampling,
                                                          temperature):
  ds = datasets.build(_cfg(sampling=sampling,
                           sampling_temperature=temperature))
  counts = np.array([len(ds.train) - 300, 300], np.float64)
  share = counts ** (1 / temperature) if sampling == "temperature" else (
      np.ones(2))
  want = share / share.sum()
  shuffle = streams.EpochShuffle(np.arange(len(ds.train)), 64, 0,
                                 ds.train.weights)
  rows = np.concatenate([shuffle(k) for k in range(200)])
  got = np.mean(rows >= counts[0])
  assert got == pytest.approx(want[1], abs=0.02)  # 12800 draws.
  again = streams.EpochShuffle(np.arange(len(ds.train)), 64, 0,
                               ds.train.weights)
  np.testing.assert_array_equal(again(137), shuffle(137))  # Resumable.


@pytest.mark.parametrize("sources,match", [
    ({"a": DIGITS, "b": DIGITS}, "disjoint tasks"),
    ({"a": DIGITS, "b": dict(IMAGES, synthetic=dict(IMAGES["synthetic"],
                                                    size=10))},
     "share one input shape"),
    ({"a": DIGITS}, "at least two"),
])
def test_bad_mixes_are_errors(sources, match):
  with pytest.raises(UserError, match=match):
    datasets.build(ml_collections.ConfigDict(dict(name="mix",
                                                  sources=sources)))


def test_mixed_pipeline_end_to_end(tmp_path, run_mtkd):
  from configs import quickstart
  c = quickstart.get_config("smoke")
  c.data.name, c.data.sources = "mix", {"a": DIGITS, "b": IMAGES}
  c.data.sampling = "uniform"
  c.teacher.kind = "multi"
  c.teacher.steps = c.student.steps = 12
  c.teacher.model = c.student.model = dict(name="mlp", hidden=(16,))
  results = run_mtkd(c, tmp_path / "w")
  assert set(results) == {"digit", "parity", "label", "coarse"}
  # Each task is evaluated on its own source's test rows only.
  assert results["label"]["student"]["count"] == 100
