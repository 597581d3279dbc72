"""Quickstart: MultiFashion, two per-task teachers -> one two-head student.

MultiFashion overlays two different Fashion-MNIST items on a 36x36 canvas
(item A at the top left, item B offset by 8 pixels, pixel-wise max); task
`left` is A's class and task `right` is B's. Each task gets its own CNN
teacher trained on all 60k labelled pairs. The student, a 169k-parameter
MLP, sees labels for only 1000 pairs; the other 59k pairs are an unlabelled
transfer set on which it learns from the cached teacher logits alone. The
labels-only baseline is the same MLP, seed and step budget, trained on the
1000 labelled pairs.

Reproduce (needs Debian's dataset-fashion-mnist, or --config.data.dir):
  python -m mtkd.main --config=configs/quickstart.py --workdir=workdirs/quickstart
Smoke run (well under a minute on 2 CPU cores):
  python -m mtkd.main --config=configs/quickstart.py:smoke --workdir=/tmp/qs
Bring your own data:
  python -m mtkd.main --config=configs/quickstart.py --workdir=W \
      --config.data.name=npz --config.data.path=my_data.npz
"""

import ml_collections

from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = (("data", -1),)  # Add ("fsdp", n) to shard large parameters.
  c.parallel = ml_collections.ConfigDict(dict(
      strategy="jit",          # 'jit' (NamedSharding) or 'pmap'.
      fsdp_min_size=2**14,     # Arrays this large are split over 'fsdp'.
      distributed=False,       # Multi-process: jax.distributed.initialize().
      coordinator_address="",  # Only outside TPU VMs / SLURM: HOST:PORT,
      num_processes=0,         # with the process count
      process_id=-1,           # and this process's index.
  ))

  c.data = ml_collections.ConfigDict(dict(
      name="multifashion",
      dir="",             # Directory of IDX files ('' = Debian's location).
      path="",            # For name='npz'.
      num_labeled=1000,   # Labels the student sees; -1 = all.
      label_seed=0,
      transfer_set=True,  # Unlabelled rest of train: KD targets only.
      max_train=0,        # > 0 trims the splits (smoke runs).
      max_test=0,
  ))

  c.teacher = ml_collections.ConfigDict(dict(
      kind="single",      # 'single': one teacher per task; 'multi': one.
      model=dict(name="patch_cnn", channels=(32, 64), dense=256),
      optimizer=dict(name="adam", learning_rate=1e-3),
      steps=938,          # 2 epochs of 60k at batch 128.
      batch_size=128,
      workdir="",         # Re-use teachers and caches from another workdir.
  ))

  c.student = ml_collections.ConfigDict(dict(
      model=dict(name="mlp", hidden=(128,)),
      optimizer=dict(name="adam", learning_rate=1e-3),
      steps=1500,
      batch_size=128,
  ))

  # Loss per task: alpha*T^2*KL + (1-alpha)*CE on labelled examples, T^2*KL
  # on transfer examples; per-task overrides go in `tasks`.
  c.distill = ml_collections.ConfigDict(dict(temperature=2.0, alpha=0.5))
  c.tasks = ml_collections.ConfigDict()  # {task: {weight, temperature, alpha}}
  c.cache = ml_collections.ConfigDict(dict(
      dtype="float32",     # Or 'float16' (half the bytes, slower reads).
      shard_size=16384,    # Examples per shard (unit of resume and writes).
  ))

  c.nonfinite = "stop"  # NaN/Inf loss or gradient: 'stop', or 'skip' update.
  c.eval_batch_size = 1000
  c.log_every = 100
  c.checkpoint_every = 500

  if args["smoke"]:
    c.data.max_train = 2048
    c.data.max_test = 512
    c.data.num_labeled = 256
    c.teacher.steps = 40
    c.teacher.batch_size = 64
    c.student.steps = 40
    c.student.batch_size = 64
    c.eval_batch_size = 256
    c.cache.shard_size = 1024
    c.log_every = 20
    c.checkpoint_every = 20
  return c
