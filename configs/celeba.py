"""CelebA's 40 face attributes: multi-task KD on multilabel targets.

arg `tasks`: one (the 40 attributes as one multilabel task: per-attribute
sigmoid KD and BCE, mean accuracy over attributes) or each (40 binary
classification tasks, the multi-task setting of Sener & Koltun 2018,
'Multi-Task Learning as Multi-Objective Optimization'). Images are resized
to 64 x 64 (`config.data.image_size`, bilinear; CelebA's are 218 x 178),
read from disk per batch (`config.data.lazy`: the split is not held in
memory).
Teacher resnet32x4, student resnet8x4 (CIFAR ResNets: any input size),
Adam with cosine decay, a 5k validation split held out of train, every
label seen.

Data: TFDS celeb_a in ArrayRecord, prepared on a machine with internet:
  tfds build celeb_a --data_dir=DIR --file_format=array_record
then --config.data.dir=DIR (default ~/tensorflow_datasets).
Reproduce:
  python -m mtkd.main --config=configs/celeba.py --workdir=workdirs/celeba
Smoke run (CI; generated stand-in with CelebA's TFDS schema: nested
boolean `attributes`, read through the real TFDS source):
  python -m mtkd.main --config=configs/celeba.py:smoke --workdir=/tmp/celeba
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg
from mtkd.data import standin

TRAIN = 162770  # CelebA's train split.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, tasks="one", epochs=10)
  c = defaults.base_config()
  c.data.name, c.data.tfds_name, c.data.image_size = "tfds", "celeb_a", 64
  c.data.lazy = True  # 163k images stay on disk, read per batch.
  c.data.num_labeled, c.data.val_size = -1, 5000
  if args["tasks"] == "one":
    c.data.tasks = {"attributes": dict(fields="attributes/*",
                                       kind="multilabel")}
  elif args["tasks"] == "each":
    c.data.tasks = {a.lower(): f"attributes/{a}"
                    for a in standin.CELEBA_ATTRIBUTES}
  else:
    raise ValueError(f"tasks={args['tasks']!r}: use one or each.")
  steps = TRAIN // 128 * args["epochs"]
  for part, model in (("teacher", "resnet32x4"), ("student", "resnet8x4")):
    p = c[part]
    p.model = dict(name=model)
    p.batch_size, p.steps = 128, steps
    p.optimizer = defaults.optimizer("adam", 1e-3)
    p.optimizer.schedule = dict(p.optimizer.schedule, name="warmup_cosine")
    p.augment = dict(flip=True, max_shift=4, noise=0.0)
  c.teacher.kind = "multi"
  c.eval.every, c.eval.unit = 1, "epochs"
  c.student.stages = {"student": dict(objective="distill", data="labelled")}
  if args["smoke"]:
    defaults.smoke(c, data="tfds")
    c.data.tfds_name, c.data.standin = "mtkd_standin_celeb_a", "celeb_a"
    c.data.dir, c.data.image_size = standin.path("celeb_a"), 32
    c.data.num_labeled, c.data.val_size = -1, 64
    c.data.max_train = c.data.max_test = 0
    for part in ("teacher", "student"):
      c[part].model = dict(name="cifar_resnet", depth=8, widths=(4, 4, 8, 8))
      c[part].steps = 24
    c.eval.every = 0.5
  return c
