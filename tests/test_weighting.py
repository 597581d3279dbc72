"""Task weightings: hand-checked updates, pmap == single device, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtkd.errors import UserError
from mtkd.methods import weighting

TASKS = ("a", "b", "c")
N, D, H = 16, 3, 4  # global batch, input, hidden


def _shared(p):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key == "trunk", p)


def _last_shared(p):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: path[0].key == "trunk" and path[1].key == "w1", p)


def _make(name, tasks=TASKS, weights=None, **settings):
  return weighting.make(name, settings, tasks, _shared, _last_shared,
                        weights=weights)


def _model():
  """Two trunk layers, three linear heads; task b's targets oppose a's."""
  rng = np.random.default_rng(0)
  params = {"trunk": {"w0": rng.normal(size=(D, H)),
                      "w1": rng.normal(size=(H, H)) / 2},
            **{f"head_{t}": {"w": rng.normal(size=(H,))} for t in TASKS}}
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  x = rng.normal(size=(N, D)).astype(np.float32)
  ya = rng.normal(size=N)
  y = np.stack([ya, -ya + 0.1 * rng.normal(size=N), rng.normal(size=N)], 1)
  return params, x, y.astype(np.float32)


def _loss_fn(x, y):
  """Per-task MSE; a shard's losses are its share of the global mean."""
  def loss_fn(p):
    h = jnp.tanh(x @ p["trunk"]["w0"]) @ p["trunk"]["w1"]
    pred = jnp.stack([h @ p[f"head_{t}"]["w"] for t in TASKS], 1)
    return jnp.sum((pred - y) ** 2, 0) / N, {"n": x.shape[0]}
  return loss_fn


def _close(a, b, tol=1e-5):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(
      np.asarray(u), np.asarray(v), rtol=tol, atol=tol), a, b)


CONFIGS = {"equal": {}, "fixed": {"weights": {"a": 2.0, "c": 0.5}},
           "uncertainty": {"learning_rate": 0.1},
           "dwa": {"period": 1}, "gradnorm": {"learning_rate": 0.1},
           "pcgrad": {}}


def test_every_registered_method_is_tested():
  assert sorted(CONFIGS) == weighting.WEIGHTINGS.names()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pmap_equals_single_device_and_jit_keeps_state_shape(name):
  """Three steps (DWA's weights kick in at the third); every output agrees
  between jit on the whole batch and pmap over 8 shards, on every device,
  even though each device gets a different rng (device 0's is the jit one)."""
  w = _make(name, **CONFIGS[name])
  params, x, y = _model()
  ndev = jax.device_count()
  assert ndev == 8
  single = jax.jit(lambda p, s, t, r: w(_loss_fn(x, y), p, s, t, r))
  multi = jax.pmap(
      lambda p, s, t, r, xs, ys: w(_loss_fn(xs, ys), p, s, t, r, "d"),
      axis_name="d", in_axes=(None, None, None, 0, 0, 0))
  xs, ys = x.reshape(ndev, -1, D), y.reshape(ndev, -1, len(TASKS))
  state = state_m = w.init(params)
  params_m = params
  for t in range(3):
    rng = jax.random.key(t)
    rngs = jnp.concatenate([rng[None], jax.random.split(rng, ndev - 1)])
    loss, grads, aux, new_state, metrics = single(params, state, t, rng)
    out = multi(params_m, state_m, t, rngs, xs, ys)
    assert aux == {"n": N}
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.leaves(jax.tree.map(
        lambda a, b: (a.shape, a.dtype) != (b.shape, b.dtype),
        new_state, state)) == [False] * len(jax.tree.leaves(state))
    assert np.isfinite(loss)
    assert {f"weight/{n}" for n in TASKS} <= set(metrics)
    for d in range(ndev):
      dev = jax.tree.map(lambda v, d=d: v[d], out)
      assert dev[2] == {"n": N // ndev}
      _close((loss, grads, new_state, metrics),
             (dev[0], dev[1], dev[3], dev[4]))
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
    params_m = jax.tree.map(lambda p, g: p - 0.05 * g[0], params_m, out[1])
    state, state_m = new_state, jax.tree.map(lambda v: v[0], out[3])
  if name in ("dwa", "gradnorm", "uncertainty"):  # the weights moved
    assert not np.allclose(metrics["weight/a"][0], metrics["weight/b"][0])
  if name == "pcgrad":  # the tasks conflict, so projections ran
    assert metrics["pcgrad/conflict"][0] > 0


def _const_losses(values):
  """A loss_fn with fixed losses (params {"w": scalar} unused)."""
  return lambda p: (jnp.asarray(values, jnp.float32) + 0.0 * p["w"], None)


def test_equal_and_fixed_weights():
  params, x, y = _model()
  losses, _ = _loss_fn(x, y)(params)
  for name, kw, want in [("equal", {}, [1, 1, 1]),
                         ("fixed", {"weights": {"a": 2.0, "c": 0.5}},
                          [2, 1, 0.5]),
                         ("fixed", {"weights": [3.0, 0.0, 1.5]}, [3, 0, 1.5]),
                         ("fixed", {}, [1, 1, 1])]:
    w = _make(name, **kw)
    loss, grads, *_, metrics = w(_loss_fn(x, y), params, {}, 0,
                                 jax.random.key(0))
    want = np.asarray(want, np.float32)
    _close(loss, np.dot(want, losses))
    _close(grads, jax.grad(lambda p, want=want: jnp.dot(
        want, _loss_fn(x, y)(p)[0]))(params))
    assert [float(metrics[f"weight/{n}"][0]) for n in TASKS] == list(want)


@pytest.mark.parametrize("weights,match", [
    ({"a": -1.0}, "must be >= 0"), ([1.0, 2.0], "2 entries for 3 tasks"),
    ({"z": 1.0}, "unknown tasks"), ([1.0, float("nan"), 1.0], ">= 0")])
def test_fixed_rejects_bad_weights(weights, match):
  with pytest.raises(ValueError, match=match):
    _make("fixed", weights=weights)


def test_make_unknown_name_uses_registry_error():
  with pytest.raises(UserError, match="Unknown task weighting 'nope'"):
    _make("nope")


def test_uncertainty_first_step_and_optimum():
  """d total/ds_i = 0.5 (1 - exp(-s_i) L_i), so s* = log L. Adam's first
  step is exactly -lr * sign(grad) (bias-corrected m/sqrt(v) = g/|g|)."""
  values = np.array([0.5, 2.0, 4.0], np.float32)
  w = _make("uncertainty", learning_rate=0.05)
  params = {"w": jnp.zeros(())}
  state = w.init(params)
  s0 = np.full(3, -0.5, np.float32)
  _close(state["log_var"], s0)
  loss, _, _, state1, metrics = w(_const_losses(values), params, state, 0,
                                  jax.random.key(0))
  _close(loss, np.sum(0.5 * np.exp(-s0) * values + 0.5 * s0))
  _close(metrics["weight/b"][0], 0.5 * np.exp(0.5))
  g = 0.5 * (1 - np.exp(-s0) * values)
  _close(state1["log_var"], s0 - 0.05 * g / (np.abs(g) + 1e-8))

  @jax.jit
  def run(state):
    return jax.lax.fori_loop(0, 3000, lambda t, s: w(
        _const_losses(values), params, s, t, jax.random.key(0))[3], state)
  _close(run(state)["log_var"], np.log(values), tol=1e-2)


def test_dwa_matches_numpy_simulation():
  period, temp, steps = 3, 2.0, 14
  w = _make("dwa", tasks=("a", "b"), period=period, temperature=temp)
  params = {"w": jnp.zeros(())}
  call = jax.jit(lambda s, t, v: w(_const_losses(v), params, s, t,
                                   jax.random.key(0)))
  seq = np.random.default_rng(0).uniform(0.5, 2.0, (steps, 2))
  state, means, buf = w.init(params), [], []
  for t in range(steps):
    want = np.ones(2)
    if len(means) >= 2:
      e = np.exp(means[-1] / means[-2] / temp)
      want = 2 * e / e.sum()
    loss, *_, state, metrics = call(state, t, seq[t])
    _close(np.array([metrics["weight/a"][0], metrics["weight/b"][0]]), want)
    _close(loss, np.dot(want, seq[t]))
    buf.append(seq[t])
    if (t + 1) % period == 0:
      means.append(np.mean(buf, 0))
      buf = []
  assert int(state["periods"]) == steps // period


def _linear_two_task():
  """L_k = mean((x W v_k - y_k)^2); W is the (last) shared layer."""
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2)) * [1.0, 3.0]
  params = {"trunk": {"w1": rng.normal(size=(3, 2))},
            "head_a": {"w": rng.normal(size=2)},
            "head_b": {"w": rng.normal(size=2)}}

  def numpy_grads(p):
    """Per task: loss and dL/dW = 2/n x^T (res v^T), by hand."""
    out = []
    for k, head in enumerate(("head_a", "head_b")):
      v = p[head]["w"]
      res = x @ p["trunk"]["w1"] @ v - y[:, k]
      out.append((np.mean(res**2), 2 / len(x) * x.T @ np.outer(res, v)))
    return out

  def loss_fn(p):
    h = x @ p["trunk"]["w1"]
    pred = jnp.stack([h @ p["head_a"]["w"], h @ p["head_b"]["w"]], 1)
    return jnp.mean((pred - y) ** 2, 0), None

  return jax.tree.map(np.asarray, params), numpy_grads, loss_fn


def test_gradnorm_matches_hand_computation():
  """Two calls: the first stores L(0) (so r = 1); the second has r != 1.
  A large lr then drives one weight to 0 (the clip), the other to K = 2."""
  with jax.enable_x64():
    params, numpy_grads, loss_fn = _linear_two_task()
    state = {"weights": np.ones(2), "initial_losses": np.ones(2),
             "initialized": np.int32(0)}
    l0 = None
    for lr, alpha in [(0.1, 1.5), (0.1, 1.5), (50.0, 0.5)]:
      w = _make("gradnorm", tasks=("a", "b"), learning_rate=lr, alpha=alpha)
      loss, grads, _, new, metrics = w(loss_fn, params, state, 0,
                                       jax.random.key(0))
      (la, ga), (lb, gb) = numpy_grads(params)
      ws, losses = np.asarray(state["weights"]), np.array([la, lb])
      l0 = losses if l0 is None else l0
      g = ws * [np.linalg.norm(ga), np.linalg.norm(gb)]
      lt = losses / l0
      target = g.mean() * (lt / lt.mean()) ** alpha
      dw = np.sign(g - target) * g / ws
      new_w = np.maximum(ws - lr * dw, 0)
      new_w = 2 * new_w / new_w.sum()
      np.testing.assert_allclose(loss, ws @ losses, rtol=1e-12)
      np.testing.assert_allclose(grads["trunk"]["w1"], ws[0] * ga + ws[1] * gb,
                                 rtol=1e-10)
      np.testing.assert_allclose(metrics["gradnorm/loss"][0],
                                 np.abs(g - target).sum(), rtol=1e-10)
      np.testing.assert_allclose(new["weights"], new_w, rtol=1e-10)
      np.testing.assert_allclose(new["initial_losses"], l0, rtol=1e-12)
      state = new
      params = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert min(new_w) == 0.0 and max(new_w) == 2.0


def _pcgrad(g, heads=None):
  """PCGrad on losses g_k . theta (+ head terms); returns the grads."""
  g = jnp.asarray(g, jnp.float32)
  heads = jnp.zeros(len(g)) if heads is None else jnp.asarray(heads)
  params = {"trunk": {"w0": jnp.zeros(g.shape[1])}, "head": jnp.zeros(len(g))}

  def loss_fn(p):
    return g @ p["trunk"]["w0"] + heads * p["head"], None

  tasks = tuple(f"t{i}" for i in range(len(g)))
  w = weighting.make("pcgrad", None, tasks, _shared, _last_shared)
  return w(loss_fn, params, {}, 0, jax.random.key(3))[1]


def test_pcgrad_hand_example_and_no_conflict():
  # g1.g2 = -1: g1' = g1 + g2/2 = (.5,.5); g2' = g2 + g1 = (0,1).
  grads = _pcgrad([[1.0, 0.0], [-1.0, 1.0]], heads=[1.0, 2.0])
  _close(grads["trunk"]["w0"], [0.5, 1.5])
  _close(grads["head"], [1.0, 2.0])  # heads: each task's own gradient
  _close(_pcgrad([[1.0, 0.0], [1.0, 1.0]])["trunk"]["w0"], [2.0, 1.0])


def test_pcgrad_projection_properties_and_order():
  rng = np.random.default_rng(2)
  g1 = rng.normal(size=5)
  g = jnp.asarray(np.stack([g1, -g1 + 0.3 * rng.normal(size=5)]), jnp.float32)
  assert float(g[0] @ g[1]) < 0
  p = weighting.pcgrad_project(g, jax.random.key(0))
  np.testing.assert_allclose([p[0] @ g[1], p[1] @ g[0]], 0.0, atol=1e-5)

  # Three tasks: a numpy loop in the permutation order the key gives.
  g = rng.normal(size=(3, 4)).astype(np.float32)
  g[2] = -g[0] - g[1]
  key = jax.random.key(7)
  got = weighting.pcgrad_project(jnp.asarray(g), key)
  for i, sub in enumerate(jax.random.split(key, 3)):
    gi = g[i].astype(np.float64)
    for j in np.asarray(jax.random.permutation(sub, 3)):
      if j != i and gi @ g[j] < 0:
        gi = gi - (gi @ g[j]) / (g[j] @ g[j] + 1e-8) * g[j]
    np.testing.assert_allclose(got[i], gi, rtol=1e-5, atol=1e-6)
