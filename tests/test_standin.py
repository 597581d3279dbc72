"""The dataset configs' smoke runs (configs/cifar100_mtl.py, celeba.py,
glue_mix.py) on generated stand-ins in the real schemas, read through the
real sources (TFDS ArrayRecord; Hugging Face Parquet + a tokenizer, mixed),
and the stand-ins themselves."""

import os

import numpy as np
import pytest

from mtkd.configs_util import load_config
from mtkd.data import datasets, standin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def standin_dir(tmp_path_factory):
  with pytest.MonkeyPatch.context() as m:
    d = str(tmp_path_factory.mktemp("standin"))
    m.setenv("MTKD_STANDIN_DIR", d)
    yield d


def _smoke(name, arg="smoke"):
  c = load_config(os.path.join(ROOT, "configs", f"{name}.py"), arg)
  c.teacher.steps = c.student.steps = 8
  c.eval.every = 0.0
  return c


def test_cifar100_standin_has_the_schema_and_learnable_labels():
  c = _smoke("cifar100_mtl")
  path = standin.prepare("cifar100")
  assert standin.prepare("cifar100") == path  # Written once.
  ds = datasets.build(c.data)
  assert ds.num_classes == {"fine": 100, "coarse": 20}
  assert ds.input_shape == (32, 32, 3)
  for split in (ds.train, ds.test):
    np.testing.assert_array_equal(split.labels["coarse"],
                                  split.labels["fine"] // 5)
    # The fine class sets the mean colour (the stand-in's rule).
    fine = split.labels["fine"]
    want = np.stack([fine % 5, fine // 5 % 5, fine // 25], 1) * 50 + 14.5
    got = split.x.reshape(len(split), -1, 3).mean(1)
    assert np.abs(got - want).max() < 3
  # String ids ('train_00042') hashed: stable, unique, non-negative.
  assert ds.train.ids.min() >= 0 and len(set(ds.train.ids)) == len(ds.train)
  np.testing.assert_array_equal(datasets.build(c.data).train.ids,
                                ds.train.ids)


@pytest.mark.parametrize("name,arg,tasks", [
    ("cifar100_mtl", "smoke", {"fine", "coarse"}),
    ("celeba", "smoke", {"attributes"}),
    ("glue_mix", "smoke", {"sst2", "cola", "mrpc"}),
])
def test_dataset_config_smoke_runs(name, arg, tasks, tmp_path, run_mtkd):
  results = run_mtkd(_smoke(name, arg), tmp_path / "w")
  assert set(results) == tasks
  for task in tasks:
    assert {"teacher", "baseline", "student"} <= set(results[task])
    assert np.isfinite(results[task]["student"]["accuracy"])


def test_celeba_attributes_as_one_multilabel_task_or_forty():
  one = datasets.build(_smoke("celeba").data)
  assert one.kind("attributes") == "multilabel"
  assert one.num_classes == {"attributes": 40}
  each = datasets.build(_smoke("celeba", "smoke,tasks=each").data)
  assert len(each.tasks) == 40 and each.num_classes["smiling"] == 2
  j = standin.CELEBA_ATTRIBUTES.index("Smiling")
  np.testing.assert_array_equal(each.train.labels["smiling"],
                                one.train.labels["attributes"][:, j])
