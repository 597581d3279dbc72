"""CIFAR-100 fine + coarse multi-task KD with the CIFAR KD recipe.

Two tasks from one dataset: `fine` (TFDS field `label`, 100 classes) and
`coarse` (`coarse_label`, 20 superclasses). The recipe, pairs and epochs
are configs/cifar_kd.py's (SGD 0.05, 240 epochs at batch 64, T = 4, pad-4
crop + flips, every label seen). arg `teacher`: multi (one trunk, a head
per task: task-level KD from a multi-task teacher) or single (a teacher
per task). arg `method`: kd (CE 0.1 + KD 0.9 per task) or baseline.

Data: TFDS cifar100 in ArrayRecord, prepared on a machine with internet:
  tfds build cifar100 --data_dir=DIR --file_format=array_record
then --config.data.dir=DIR (default ~/tensorflow_datasets).
Reproduce:
  python -m mtkd.main --config=configs/cifar100_mtl.py:pair=resnet32x4_resnet8x4 --workdir=workdirs/cifar100_mtl
Smoke run (CI; generated stand-in with CIFAR-100's TFDS schema, written to
$MTKD_STANDIN_DIR or the temp folder, read through the real TFDS source):
  python -m mtkd.main --config=configs/cifar100_mtl.py:smoke --workdir=/tmp/cifar100_mtl
"""

import os

import ml_collections

from mtkd.configs_util import load_config, parse_arg
from mtkd.data import standin

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, pair="resnet32x4_resnet8x4",
                   epochs=240, teacher="multi", method="kd")
  if args["teacher"] not in ("multi", "single"):
    raise ValueError(f"teacher={args['teacher']!r}: use multi or single.")
  if args["method"] not in ("kd", "baseline"):
    raise ValueError(f"method={args['method']!r}: use kd or baseline.")
  c = load_config(os.path.join(HERE, "cifar_kd.py"), ",".join(
      [f"pair={args['pair']}", f"epochs={args['epochs']}",
       f"method={args['method']}"] + ["smoke"] * args["smoke"]))
  c.teacher.kind = args["teacher"]
  c.data.name, c.data.tfds_name = "tfds", "cifar100"
  c.data.tasks = {"fine": "label", "coarse": "coarse_label"}
  if args["smoke"]:
    c.data.tfds_name, c.data.standin = "mtkd_standin_cifar100", "cifar100"
    c.data.dir = standin.path("cifar100")
    c.data.max_train = c.data.max_test = 0
    c.data.val_size = 64
  return c
