"""The full default config every `configs/*.py` file starts from.

Config files set only what their experiment changes, so every key exists in
every config (and `--config.x.y=...` works everywhere). Values here are the
quickstart's: MultiFashion, per-task CNN teachers, an MLP student with 1000
labels and a transfer set, plain KD.

Each objective's and weighting's settings block comes from the plug-in
itself (`default_settings`, `mtkd.methods`), so a new plug-in's settings
need no edit here and are overridable like every other key.
"""

import ml_collections

from mtkd.methods.objectives import OBJECTIVES
from mtkd.methods.weighting import WEIGHTINGS
from mtkd.train import optim


def plugin_blocks(registry) -> dict[str, ml_collections.ConfigDict]:
  """`{settings_key: default_settings}` of a registry's plug-ins; plug-ins
  that share a key must agree on its defaults."""
  out = {}
  for name in registry.names():
    cls = registry.get(name)
    key, block = cls.settings_key, dict(cls.default_settings)
    if not key:
      continue
    if key in out and out[key].to_dict() != block:
      raise ValueError(f"Plug-ins disagree on the defaults of {key!r}.")
    out[key] = ml_collections.ConfigDict(block)
  return out


def optimizer(name: str = "adam", learning_rate: float = 1e-3,
              **kwargs) -> dict:
  """An optimizer block with every recipe key (`mtkd.train.optim`), so any
  can be overridden from the command line; `kwargs` go to the optimizer
  (sgd: momentum, nesterov; adam: b1, b2, eps; ...)."""
  return dict(dict(name=name, learning_rate=learning_rate,
                   schedule=dict(optim.SCHEDULE_DEFAULTS),
                   weight_decay=0.0,   # On kernels and embeddings only.
                   clip_norm=0.0),     # > 0: clip the gradient's global norm.
              **kwargs)


def augmentation() -> dict:
  """In-step augmentation (`mtkd.data.augment`); all off."""
  return dict(flip=False,   # Left-right, with probability 1/2.
              max_shift=0,  # Pixels (zero fill): 4 = CIFAR's pad-and-crop.
              noise=0.0)    # Gaussian noise stddev.


def host_augmentation() -> dict:
  """Host-side augmentation in Grain's worker threads
  (`mtkd.data.host_augment`); all off."""
  return dict(flip=False,
              pad_crop=0,  # Zero-pad, then crop back at a random offset.
              resized_crop=dict(scale=(0.0, 0.0), ratio=(3 / 4, 4 / 3)),
              randaugment=dict(num_ops=0, magnitude=9),
              # 'mixup' / 'cutmix' with a partner row, lam ~ Beta(a, a).
              mix=dict(kind="", alpha=1.0))


def recipe() -> dict:
  """Training-recipe keys every part (teacher, student, source) has."""
  return dict(label_smoothing=0.0,  # Of the label loss.
              accumulate=1)         # Micro-batches per step (same update).


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = (("data", -1),)  # Add ("fsdp", n) to shard large parameters.
  c.parallel = ml_collections.ConfigDict(dict(
      placement="jit",         # 'jit' (NamedSharding) or 'pmap'.
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
      val_size=0,         # > 0: hold this many train examples out (val).
      val_seed=0,
      pad_to=0,           # > 0: zero-pad images to pad_to x pad_to.
      # For name='folder' (dir/train/<class>/*.png): resize to S x S (0:
      # keep; all must match), Pillow mode, 'fail' or 'skip' bad images.
      image_size=0,
      mode="RGB",
      on_corrupt="fail",
      # For name='hf' (save_to_disk folder or Parquet at `path`): the input
      # field, the id field (row index when absent), {task: label field}
      # (empty: every ClassLabel field).
      input_field="image",
      pair_field="",      # A second text field: inputs are text pairs.
      id_field="id",
      tasks={},
      # Text input fields: a local tokenizer file (mtkd/data/tokenize.py):
      # kind 'hf_tokenizers' (tokenizer.json) or 'sentencepiece' (.model).
      tokenizer=dict(kind="", path="", max_len=128),
      # For name='tfds' (ArrayRecord under `dir`): the TFDS name.
      tfds_name="",
      # 'tfds', 'hf', 'folder': images stay on disk, each batch's rows read
      # and decoded by the process that gathers them (larger than memory).
      lazy=False,
      # For 'hf' and 'tfds': the stored splits read as train and test (GLUE
      # hides its test labels: test='validation').
      splits=dict(train="train", test="test"),
      # For name='mix': {source: data block} with disjoint tasks, and how
      # training draws sources: proportional | uniform | temperature.
      sources={},
      sampling="proportional",
      sampling_temperature=1.0,
      # Smoke runs of the dataset configs: write this generated stand-in
      # (mtkd/data/standin.py) before reading it with the real source.
      standin="",
      # For name='synthetic_images' (generated; tests and smoke runs).
      synthetic=dict(size=32, channels=3, classes=10, num_train=2048,
                     num_test=512),
  ))
  # Evaluation during training, for every stage and teacher: per-task
  # metrics logged as eval/<task>/<metric>, and the kept "best" checkpoint
  # chosen by them (results.json then reports <model>:best beside <model>).
  c.eval = ml_collections.ConfigDict(dict(
      every=0.0,      # > 0: evaluate every `every` `unit`s (and at the end).
      unit="steps",   # Or 'epochs' (the stage's rows / batch size).
      split="val",    # 'val' (needs data.val_size) or 'test': choosing the
                      # best model on test then says so in every table.
  ))

  c.teacher = ml_collections.ConfigDict(dict(
      kind="single",      # 'single': one teacher per task; 'multi': one.
      model=dict(name="patch_cnn", channels=(32, 64), dense=256),
      optimizer=optimizer(),
      steps=938,          # 2 epochs of 60k at batch 128.
      batch_size=128,
      workdir="",         # Re-use teachers and caches from another workdir.
      ensemble=1,         # Members per teacher (seeds seed, seed+1, ...).
      models={},          # Per-teacher architecture overrides: {name: model}.
      init="",            # 'source': start from the source model's trunk.
      # Start from saved weights: an mtkd workdir, an Orbax folder or
      # .msgpack of Flax variables, or a PyTorch/safetensors state_dict
      # ('{member}' in the path: each teacher's name). steps=0: use as is;
      # steps > 0: fine-tune (mtkd.models.pretrained).
      checkpoint="",
      augment=augmentation(),
      host_augment=host_augmentation(),
      **recipe(),
  ))

  c.student = ml_collections.ConfigDict(dict(
      model=dict(name="mlp", hidden=(128,)),
      optimizer=optimizer(),
      steps=1500,         # Default step count of each student stage.
      batch_size=128,
      augment=augmentation(),  # In-step augmentation.
      host_augment=host_augmentation(),  # Before the step, on the host.
      # Stages in order: {name: {objective, steps (-1: student.steps), data
      # ('all': with the transfer set; 'labelled'), init ('', 'source' or an
      # earlier stage), init_parts ('trunk'/'model'), freeze (''/'trunk'),
      # teacher_mode ('cached'/'online')}}. The baseline (labels only, the
      # stages' total steps) always runs first.
      stages=dict(student=dict(objective="distill")),
      ema=0.0,            # > 0: also evaluate an EMA of the parameters.
      **recipe(),
  ))

  # Loss per task: alpha*T^2*KL + (1-alpha)*CE on labelled examples, T^2*KL
  # on transfer examples; per-task overrides go in `tasks`.
  c.distill = ml_collections.ConfigDict(dict(temperature=2.0, alpha=0.5))
  c.tasks = ml_collections.ConfigDict()  # {task: {weight, temperature, alpha}}
  c.cache = ml_collections.ConfigDict(dict(
      dtype="float32",     # Or 'float16' / 'bfloat16' (half the bytes).
      # > 0: keep each row's (each token's, for a sequence task) top_k
      # classification logits, and of the rest
      # of the teacher's probability (train split; README: Logit cache):
      # 'uniform' spread it evenly, 'renormalized' drop it, 'bucket' keep
      # its mass per temperature as one bin, 'sampled' draw top_k ids from
      # the teacher instead (unbiased).
      top_k=0,
      tail="uniform",
      # Temperatures a bucket cache keeps tail masses for (a sampled cache:
      # the one it draws at); empty = each task's distillation temperature.
      temperatures=(),
      # > 0: cache the teachers on K augmented views of every training
      # example (config.student.augment, rendered per (view_seed, id, view))
      # and let each student draw replay one of them, re-rendered in the step:
      # consistent teaching at cached cost (mtkd/data/views.py). 0: the
      # un-augmented inputs (a "fixed teacher" under augmentation).
      views=0,
      view_seed=0,
      # With views: each view mixes the example's view with a partner's
      # (mixup, lam ~ U[0, 1)): function matching from a cache. Mixed
      # inputs have no single label, so it needs distill.alpha = 1.
      mixup=False,
      shard_size=16384,    # Examples per shard (unit of resume and writes).
  ))

  # Each objective's own settings block (`config.<objective>`, e.g.
  # config.dkd.beta), read only by the stages that name the objective.
  for key, block in plugin_blocks(OBJECTIVES).items():
    if key in c:
      raise ValueError(f"An objective's settings_key {key!r} is a core key.")
    c[key] = block
  # Multi-task weighting of the terms (tasks, plus feature terms): `name`,
  # and each method's own block (config.weighting.dwa.period, ...).
  c.weighting = ml_collections.ConfigDict(dict(
      name="fixed",  # equal | fixed (config.tasks weights) | uncertainty |
                     # dwa | gradnorm | pcgrad.
      **plugin_blocks(WEIGHTINGS)))
  # Transfer: a model trained on a source dataset (steps > 0 enables it).
  c.source = ml_collections.ConfigDict(dict(
      data=dict(name="fashion_mnist", dir="", path="", max_train=0,
                max_test=0),
      model=dict(name="mlp", hidden=(128,)),
      optimizer=optimizer(),
      steps=0,
      batch_size=128,
      **recipe(),
  ))

  c.baseline = True  # Also train the labels-only baseline (same budget).
  c.nonfinite = "stop"  # NaN/Inf loss or gradient: 'stop', or 'skip' update.
  # Train steps as two programs (forward, then backward + update): XLA:CPU's
  # one-program CNN step recomputes BatchNorm/ReLU inside each convolution
  # backward; split, resnet20 went 0.54x -> 0.92x of PyTorch eager.
  c.split_step = False
  c.eval_batch_size = 1000
  c.log_every = 100
  # Metric writers besides logs/metrics.jsonl: 'tensorboard', 'wandb'.
  c.writers = ("tensorboard",)
  # Weights & Biases (with 'wandb' in writers): offline by default, so it
  # needs no network; `wandb sync` the run folders later. group: the
  # workdir's name when empty.
  c.wandb = ml_collections.ConfigDict(dict(project="mtkd", entity="",
                                           mode="offline", group=""))
  c.checkpoint_every = 500
  # Batches placed on device ahead of the step by a background thread
  # (`mtkd.train.prefetch`); 0 = put in the loop. No gain on a 2-core CPU host
  # (experiments/README.md); meant for accelerator hosts with spare cores.
  c.prefetch_to_device = 0

  return c


def smoke(c: ml_collections.ConfigDict, data: str = "digits"
          ) -> ml_collections.ConfigDict:
  """Shrinks a config to a CI smoke run (seconds, on `data`)."""
  c.data.name = data
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
  c.source.steps = min(c.source.steps, 40)
  c.source.batch_size = 64
  c.source.data.max_train = 2048
  return c
