"""Placements: how a train step runs on devices, `jit` over a mesh or `pmap`.

Both placements compile the *same* step body from
`mtkd.train.step.make_train_step`; `pmap` passes an axis name so the body
sums counts, gradients and metrics over devices (see
`mtkd.methods.objectives.combine`). The loop keeps the canonical state as
global arrays placed by `state_shardings` (what checkpoints and evaluation
use); a placement converts to and from its own layout with `to_device` /
`from_device`. `config.parallel.placement` picks one. ("Strategy" in mtkd
means a KD method, never a placement.)

A body that is a `step.SplitStep` (config.split_step) compiles as two
programs, chained by `Chained`: the forward without donation (the
backward reads the same state), the backward with the state donated.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from mtkd.errors import UserError
from mtkd.registry import Registry
from mtkd.train import packing, sharding
from mtkd.train.step import SplitStep

PLACEMENTS: Registry = Registry("placement")
# axis_name -> step body: a step function, or a `SplitStep`.
StepFactory = Callable[[str | None], Callable | SplitStep]


class Chained(NamedTuple):
  """A split step's two compiled programs; a call runs one step,
  `backward(state, forward(state, batch, rng))`. The halves are exposed to
  time or lower them separately."""
  forward: Callable
  backward: Callable

  def __call__(self, state, batch, rng):
    return self.backward(state, self.forward(state, batch, rng))


class Placement:
  """The interface: state layout, step compilation, batch and metric
  transfers, on one mesh."""

  def __init__(self, mesh: Mesh, fsdp_min_size: int = 2**14):
    self.mesh, self.fsdp_min_size = mesh, fsdp_min_size

  def state_shardings(self, abstract_state):
    """NamedShardings of the canonical (global-array) state."""
    raise NotImplementedError

  def init(self, init_fn: Callable, rng: jax.Array):
    """Creates the state directly in its canonical layout."""
    shardings = self.state_shardings(jax.eval_shape(init_fn, rng))
    return jax.jit(init_fn, out_shardings=shardings)(rng)

  def compile(self, make_step: StepFactory, state) -> Callable:
    """`make_step(axis_name)`, compiled with the state donated (a
    `SplitStep` body: a `Chained` pair, the backward donating)."""
    raise NotImplementedError

  def to_device(self, state):
    """Canonical state -> the compiled step's layout."""
    return state

  def from_device(self, state):
    """The compiled step's layout -> canonical state."""
    return state

  def put_batch(self, batch):
    """Host batch dict -> the compiled step's batch. Packed: one buffer per
    dtype (`mtkd.train.packing`), unpacked inside the step."""
    raise NotImplementedError

  def metrics_to_host(self, metrics):
    return jax.device_get(metrics)


class Jit(Placement):
  """One program over the mesh: global arrays, NamedShardings, donation."""

  def state_shardings(self, abstract_state):
    return sharding.state_shardings(abstract_state, self.mesh,
                                    self.fsdp_min_size)

  def compile(self, make_step: StepFactory, state) -> Callable:
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    rep = sharding.replicated(self.mesh)
    body = make_step(None)
    in_shardings = (state_sh, sharding.batch_sharding(self.mesh), rep)
    if isinstance(body, SplitStep):  # The carry's layout is XLA's choice.
      return Chained(
          jax.jit(_unpacking(body.forward), in_shardings=in_shardings),
          jax.jit(body.backward, out_shardings=(state_sh, rep),
                  donate_argnums=(0,)))
    return jax.jit(_unpacking(body), in_shardings=in_shardings,
                   out_shardings=(state_sh, rep), donate_argnums=(0,))

  def put_batch(self, batch):
    return sharding.put_batch(
        packing.pack(sharding.device_part(batch)), self.mesh)


class Pmap(Placement):
  """`jax.pmap` over the mesh's devices: replicated state, per-device batch
  slices, sums over the `data` axis inside the step."""

  def __init__(self, mesh: Mesh, fsdp_min_size: int = 2**14):
    if mesh.axis_names != (sharding.DATA,):
      raise UserError(
          f"parallel.placement='pmap' supports only a ('data', n) mesh, got "
          f"axes {mesh.axis_names}. Fix: use placement 'jit' for fsdp.")
    super().__init__(mesh, fsdp_min_size)
    # pmap maps over all global devices (the same list on every process);
    # each process feeds a leading axis of its local device count.
    self.devices = list(mesh.devices.flat)
    self.local = sum(d.process_index == jax.process_index()
                     for d in self.devices)

  def state_shardings(self, abstract_state):
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda _: rep, abstract_state)

  def compile(self, make_step: StepFactory, state) -> Callable:
    body = make_step(sharding.DATA)
    if isinstance(body, SplitStep):
      return Chained(
          jax.pmap(_unpacking(body.forward), axis_name=sharding.DATA,
                   in_axes=(0, 0, None), devices=self.devices),
          jax.pmap(body.backward, axis_name=sharding.DATA,
                   donate_argnums=(0,), devices=self.devices))
    return jax.pmap(_unpacking(body), axis_name=sharding.DATA,
                    in_axes=(0, 0, None), donate_argnums=(0,),
                    devices=self.devices)

  def to_device(self, state):
    n = self.local
    return jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (n, *x.shape)), state)

  def from_device(self, state):
    rep = sharding.replicated(self.mesh)
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x[0]), rep),
                        state)

  def put_batch(self, batch):
    n = self.local
    return jax.tree.map(
        lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]),
        packing.pack(sharding.device_part(batch)))

  def metrics_to_host(self, metrics):
    return jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(metrics))


def _unpacking(step: Callable) -> Callable:
  """The step on `packing.Packed` batches as well as dicts."""
  def unpacked_step(state, batch, rng):
    return step(state, packing.unpack(batch), rng)
  return unpacked_step


PLACEMENTS.register("jit")(Jit)
PLACEMENTS.register("pmap")(Pmap)


def make(cfg, mesh: Mesh) -> Placement:
  """The placement named by `config.parallel.placement`."""
  return PLACEMENTS.get(cfg.placement)(mesh, cfg.get("fsdp_min_size", 2**14))
