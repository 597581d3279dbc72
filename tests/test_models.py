"""The model zoo: parameter counts against the published ones and an
independent count of the PyTorch definitions, BatchNorm state in training
and inference, and a pipeline run with BatchNorm teachers and students."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mtkd import models
from mtkd.models.masks import transplant


def _count(name: str, classes: int = 100, shape=(32, 32, 3)) -> int:
  m = models.build(ml_collections.ConfigDict(dict(name=name)), {"t": classes})
  v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x),
                     jnp.zeros((1, *shape)))  # Shapes only: no compute.
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))


def _torch_cifar_resnet(depth, widths, classes):
  """Parameters of RepDistiller's resnet.py, counted by hand: conv weights,
  BN scale + shift, the 1x1 projections, the linear head."""
  n, total, cin = (depth - 2) // 6, 9 * 3 * widths[0] + 2 * widths[0], None
  cin = widths[0]
  for i, w in enumerate(widths[1:]):
    for j in range(n):
      total += 9 * cin * w + 9 * w * w + 4 * w
      if (i and not j) or cin != w:
        total += cin * w + 2 * w
      cin = w
  return total + cin * classes + classes


def _torch_wrn(depth, k, classes):
  n, cin, total = (depth - 4) // 6, 16, 9 * 3 * 16
  for w in (16 * k, 32 * k, 64 * k):
    for _ in range(n):
      total += 2 * cin + 9 * cin * w + 2 * w + 9 * w * w  # bn1 conv1 bn2 conv2
      if cin != w:
        total += cin * w
      cin = w
  return total + 2 * cin + cin * classes + classes


# name: (independent count for CIFAR-100, the CRD tables' millions).
PUBLISHED = {
    "resnet8": (_torch_cifar_resnet(8, (16, 16, 32, 64), 100), 0.08),
    "resnet14": (_torch_cifar_resnet(14, (16, 16, 32, 64), 100), 0.18),
    "resnet20": (_torch_cifar_resnet(20, (16, 16, 32, 64), 100), 0.28),
    "resnet32": (_torch_cifar_resnet(32, (16, 16, 32, 64), 100), 0.47),
    "resnet44": (_torch_cifar_resnet(44, (16, 16, 32, 64), 100), 0.67),
    "resnet56": (_torch_cifar_resnet(56, (16, 16, 32, 64), 100), 0.86),
    "resnet110": (_torch_cifar_resnet(110, (16, 16, 32, 64), 100), 1.74),
    "resnet8x4": (_torch_cifar_resnet(8, (32, 64, 128, 256), 100), 1.23),
    "resnet32x4": (_torch_cifar_resnet(32, (32, 64, 128, 256), 100), 7.43),
    "wrn_16_2": (_torch_wrn(16, 2, 100), 0.70),
    "wrn_40_1": (_torch_wrn(40, 1, 100), 0.57),
    "wrn_40_2": (_torch_wrn(40, 2, 100), 2.26),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts(name):
  exact, millions = PUBLISHED[name]
  got = _count(name)
  assert got == exact
  assert round(got / 1e6, 2) == millions
  assert _torch_cifar_resnet(20, (16, 16, 32, 64), 100) == 278_324  # By hand.


TINY = {"cifar_resnet": dict(name="cifar_resnet", depth=8, widths=(4, 4, 8, 8)),
        "wide_resnet": dict(name="wide_resnet", depth=10, widen=1)}


@pytest.mark.parametrize("cfg", TINY.values(), ids=TINY)
def test_batchnorm_trains_statistics_and_infers_with_them(cfg):
  m = models.build(ml_collections.ConfigDict(cfg), {"t": 3})
  x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
  v = m.init(jax.random.key(0), x)
  assert "batch_stats" in v
  _, updated = m.apply(v, 3 * x + 1, train=True, mutable=["batch_stats"])
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), v["batch_stats"],
                       updated["batch_stats"])
  assert all(jax.tree.leaves(moved))  # Every running average moved.
  # Inference reads the running averages: a row's output does not depend
  # on the rest of its batch (it would, normalising with batch statistics).
  v2 = {"params": v["params"], **updated}
  whole = m.apply(v2, x, train=False)["t"]
  alone = m.apply(v2, x[:1], train=False)["t"]
  np.testing.assert_allclose(alone, whole[:1], rtol=1e-5, atol=1e-6)
  train_out = m.apply(v2, x, train=True, mutable=["batch_stats"])[0]["t"]
  assert not np.allclose(train_out, whole, atol=1e-4)


def test_transplant_moves_batch_statistics_with_the_trunk():
  m = models.build(ml_collections.ConfigDict(TINY["cifar_resnet"]),
                   {"a": 3, "b": 2})
  net = models.Net(m)
  x = jnp.zeros((1, 8, 8, 1))
  stage = dict(net.init(jax.random.key(0), x))
  source = models.export(dict(net.init(jax.random.key(1), x)))
  source["batch_stats"] = jax.tree.map(lambda s: s + 5.0,
                                       source["batch_stats"])
  got = transplant(stage, source, "trunk", "test")
  for collection in ("params", "batch_stats"):
    for a, b in zip(jax.tree.leaves(got[collection]["model"]["trunk"]),
                    jax.tree.leaves(source[collection]["trunk"]),
                    strict=True):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(  # Heads stay freshly initialised.
      got["params"]["model"]["head_a"]["kernel"],
      stage["params"]["model"]["head_a"]["kernel"])


def test_pipeline_with_batchnorm_teachers_and_students(tmp_path, run_mtkd):
  """Teachers and students with BatchNorm through every stage: training,
  caching and evaluation with running statistics, feature KD on a stage
  output, a restart that restores everything, and --verify."""
  from configs import quickstart
  from mtkd.stages import verify
  c = quickstart.get_config("smoke")
  c.data.name = "digits"
  c.teacher.model = TINY["cifar_resnet"]
  c.student.model = TINY["wide_resnet"]
  c.teacher.steps = c.student.steps = 12
  c.student.stages = {"distill": dict(objective="distill"),
                      "feature": dict(objective="feature", init="distill",
                                      init_parts="model")}
  c.feature.layer = c.feature.teacher_layer = "stage_1"
  results = run_mtkd(c, tmp_path)
  for rows in results.values():
    assert set(rows) == {"teacher", "baseline", "distill", "feature"}
    assert all(np.isfinite(v) for m in rows.values() for v in m.values())
  assert run_mtkd(c, tmp_path) == results  # Restored, not retrained.
  assert verify.verify_workdir(c, str(tmp_path)) == []


def test_feature_adaptors_are_1x1_convolutions_on_matching_maps():
  """FitNets' regressor: a per-position linear map (1x1 convolution) when
  student and teacher maps share height and width; a Dense otherwise."""
  m = models.build(ml_collections.ConfigDict(TINY["cifar_resnet"]), {"t": 3})
  net = models.Net(m, feature_layer="stage_1",
                   adaptors=(("same", (4, 4, 12)), ("flat", (7,))))
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
  v = net.init(jax.random.key(0), x)
  k = v["params"]["adaptor_same"]
  assert k["kernel"].shape == (8, 12)  # C_student -> C_teacher.
  assert v["params"]["adaptor_flat"]["kernel"].shape == (4 * 4 * 8, 7)
  out = net.apply(v, x)["features"]
  _, blocks = m.apply({"params": v["params"]["model"],
                       "batch_stats": v["batch_stats"]["model"]}, x,
                      with_features=True)
  want = np.einsum("bhwc,cd->bhwd", blocks["stage_1"], k["kernel"]) + k["bias"]
  np.testing.assert_allclose(out["same"], want.reshape(2, -1), rtol=1e-4,
                             atol=1e-6)
  assert out["flat"].shape == (2, 7)


def test_conv_bn_relu_regressor_is_repdistillers_convreg():
  """regressor='conv_bn_relu': relu(BatchNorm(1x1 conv)) with the batch's
  statistics in training (and its running averages updated), the running
  averages at inference."""
  m = models.build(ml_collections.ConfigDict(TINY["cifar_resnet"]), {"t": 3})
  net = models.Net(m, feature_layer="stage_1", adaptors=(("s", (4, 4, 12)),),
                   regressor="conv_bn_relu")
  x = np.random.default_rng(1).normal(size=(6, 8, 8, 1)).astype(np.float32)
  v = net.init(jax.random.key(0), x)
  out, new = net.apply(v, x, train=True, mutable=["batch_stats"])
  _, blocks = m.apply({"params": v["params"]["model"],
                       "batch_stats": v["batch_stats"]["model"]}, x,
                      train=True, with_features=True, mutable=["batch_stats"]
                      )[0]
  k, bn = v["params"]["adaptor_s"], v["params"]["adaptor_s_bn"]
  y = np.einsum("bhwc,cd->bhwd", blocks["stage_1"], k["kernel"]) + k["bias"]
  mean, var = y.mean((0, 1, 2)), y.var((0, 1, 2))
  want = np.maximum((y - mean) / np.sqrt(var + 1e-5) * bn["scale"]
                    + bn["bias"], 0)
  np.testing.assert_allclose(out["features"]["s"], want.reshape(6, -1),
                             rtol=1e-4, atol=1e-5)
  stats = new["batch_stats"]["adaptor_s_bn"]
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
  infer = net.apply({**v, "batch_stats": new["batch_stats"]}, x)
  assert (infer["features"]["s"] >= 0).all()
  assert not np.allclose(infer["features"]["s"], out["features"]["s"])


def test_conv_bn_relu_regressor_pmap_matches_jit():
  """The regressor's BatchNorm normalises over the device axis under pmap
  (`with_axis_name`), so 8 devices' pmap update equals one device's jit."""
  from mtkd.methods import objectives
  from mtkd.train import optim, placement, sharding
  from mtkd.train import step as step_lib
  m = models.build(ml_collections.ConfigDict(TINY["cifar_resnet"]), {"t": 3})
  net = models.Net(m, feature_layer="stage_1", adaptors=(("s", (4, 4, 12)),),
                   regressor="conv_bn_relu")
  objective = objectives.OBJECTIVES.get("feature")(dict(
      layer="stage_1", teacher_layer="stage_1", loss="mse",
      regressor="conv_bn_relu", logits=False, weight=10.0)
  ).with_feature_targets(("s",))
  tx = optim.make_optimizer(ml_collections.ConfigDict(
      dict(name="sgd", learning_rate=0.1, momentum=0.9)))
  rng = np.random.default_rng(2)
  batch = {"inputs": rng.normal(size=(16, 8, 8, 1)).astype(np.float32),
           "labels": {"t": rng.integers(0, 3, 16).astype(np.int32)},
           "mask": np.ones(16, np.float32),
           "teacher_features": {"s": rng.uniform(
               0, 2, (16, 4 * 4 * 12)).astype(np.float32)}}
  tasks = (objectives.TaskSpec("t", 3),)
  got = []
  for place in (placement.Jit(sharding.make_mesh(devices=jax.devices()[:1])),
                placement.Pmap(sharding.make_mesh(devices=jax.devices()[:8]))):
    state = place.init(step_lib.make_init(net, tx, (8, 8, 1)),
                       jax.random.key(0))
    step = place.compile(lambda axis: step_lib.make_train_step(
        net, tx, objective, tasks, axis_name=axis), state)
    state = place.to_device(state)
    for _ in range(2):
      state, _ = step(state, place.put_batch(batch), jax.random.key(1))
    got.append(jax.device_get(place.from_device(state)))
  for a, b in zip(jax.tree.leaves(got[0]), jax.tree.leaves(got[1]),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  assert "adaptor_s_bn" in got[0].model_state["batch_stats"]
