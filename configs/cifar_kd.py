"""The CIFAR KD protocol of CRD and DKD (RepDistiller / mdistiller).

240 epochs at batch 64; SGD, learning rate 0.05 (0.01 for MobileNetV2),
momentum 0.9, weight decay 5e-4, x0.1 at epochs 150, 180 and 210; T = 4;
random crop with 4-pixel padding and horizontal flips; the student sees
every label (no transfer set). arg `method`:
  kd       CE 0.1 + KD 0.9 (alpha 0.9)
  dkd      CE + DKD (alpha 1, beta 8, warm-up 20 epochs): task weight 2 and
           alpha 0.5 give 1 x CE + 1 x DKD in mtkd's per-example mix
  fitnets  CE + 100 x MSE of the hint (the 2nd stage's output, through
           RepDistiller's ConvReg: a 1x1 conv where the maps' sizes agree,
           then BatchNorm and ReLU; without them the hint's first updates
           diverge at weight 100: experiments/README.md)
  baseline the student on labels alone (the config's baseline stage is it)
arg `pair` (teacher_student; published CIFAR-100 top-1, teacher / student
alone / KD / DKD, from the CRD and DKD tables):
  resnet32x4_resnet8x4   79.42 / 72.50 / 73.33 / 76.32   (FitNet 73.50)
  wrn_40_2_wrn_16_2      75.61 / 73.26 / 74.92 / 76.23
  resnet56_resnet20      72.34 / 69.06 / 70.66 / 71.97
  resnet110_resnet32     74.31 / 71.14 / 73.08 / 74.11
  vgg13_vgg8             74.64 / 70.36 / 72.98 / 74.68
  resnet50_mobilenetv2   (mtkd's ResNet-50 is torchvision's, with the 7x7
                         stem; RepDistiller's CIFAR ResNet-50 has a 3x3 one,
                         so this pair does not reproduce its numbers)
arg `data`: cifar100 (TFDS in ArrayRecord, prepared on a machine with
internet: `tfds build cifar100 --data_dir=DIR --file_format=array_record`,
then --config.data.dir=DIR; default DIR ~/tensorflow_datasets), fashion
(Fashion-MNIST padded to 32x32: the reduced-budget stand-in, with arg
`epochs`), or `smoke`: generated 32x32 data, small models of the pair's
families, seconds. configs/cifar100_mtl.py is the fine + coarse
multi-task version.
The teacher is trained here with the same recipe (or loaded with
--config.teacher.checkpoint=...); results report last and best (chosen on
a 5k validation split held out of train, as the CIFAR numbers are best-
epoch numbers on test in the papers: say which when you compare).

Reproduce (CIFAR-100):
  python -m mtkd.main --config=configs/cifar_kd.py:pair=resnet32x4_resnet8x4,method=dkd --workdir=workdirs/cifar_kd
Reduced budget on Fashion-MNIST (experiments/README.md):
  python -m mtkd.main --config=configs/cifar_kd.py:pair=resnet56_resnet20,method=kd,data=fashion,epochs=2 --workdir=workdirs/fmnist_kd
Smoke run (CI):
  python -m mtkd.main --config=configs/cifar_kd.py:smoke --workdir=/tmp/cifar_kd
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg

PAIRS = {"resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"),
         "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
         "resnet56_resnet20": ("resnet56", "resnet20"),
         "resnet110_resnet32": ("resnet110", "resnet32"),
         "vgg13_vgg8": ("vgg13", "vgg8"),
         "resnet50_mobilenetv2": ("resnet50_imagenet", "mobilenetv2_half")}
SMOKE = {"cifar_resnet": dict(name="cifar_resnet", depth=8,
                              widths=(4, 4, 8, 8))}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, pair="resnet32x4_resnet8x4",
                   method="kd", data="cifar100", epochs=240)
  if args["pair"] not in PAIRS:
    raise ValueError(f"Unknown pair {args['pair']!r}; known: {sorted(PAIRS)}")
  teacher, student = PAIRS[args["pair"]]
  c = defaults.base_config()
  c.data.name, c.data.num_labeled, c.data.val_size = "tfds", -1, 5000
  c.data.tfds_name, c.data.tasks = "cifar100", {"label": "label"}
  if args["data"] == "fashion":
    c.data.name, c.data.pad_to = "fashion_mnist", 32
    c.data.tasks, c.data.tfds_name = {}, ""
  epochs = args["epochs"]
  steps = 50000 // 64 * epochs  # Rows / batch x epochs (CIFAR-100 train).
  lr = 0.01 if "mobilenet" in student else 0.05
  for part, model in (("teacher", teacher), ("student", student)):
    p = c[part]
    p.model = dict(name=model)
    p.batch_size, p.steps = 64, steps
    p.optimizer = defaults.optimizer(
        "sgd", lr if part == "student" else 0.05, momentum=0.9,
        weight_decay=5e-4)
    p.optimizer.schedule = dict(
        p.optimizer.schedule, name="multistep", unit="epochs", factor=0.1,
        boundaries=tuple(b * epochs // 240 for b in (150, 180, 210)))
    p.augment = dict(flip=True, max_shift=4, noise=0.0)
  c.eval.every, c.eval.unit = 1, "epochs"
  c.distill.temperature, c.distill.alpha = 4.0, 0.9
  method = args["method"]
  if method == "dkd":
    c.distill.alpha = 0.5
    c.tasks = {"label": dict(weight=2.0)}
    c.dkd.alpha, c.dkd.beta = 1.0, 8.0
    c.dkd.warmup_steps = 50000 // 64 * 20 * epochs // 240
  if method == "fitnets":
    c.feature.layer = c.feature.teacher_layer = "stage_1"
    c.feature.loss, c.feature.logits, c.feature.weight = "mse", False, 100.0
    c.feature.regressor = "conv_bn_relu"
  objective = {"kd": "distill", "dkd": "dkd", "fitnets": "feature",
               "baseline": "supervised"}[method]
  c.student.stages = {"student": dict(objective=objective, data="labelled")}
  if args["smoke"]:
    smoke(c)
  return c


def smoke(c: ml_collections.ConfigDict) -> None:
  """Seconds on 2 cores: generated 32x32 data, small models of the same
  families, every part of the recipe on."""
  defaults.smoke(c, data="synthetic_images")
  c.data.tasks, c.data.tfds_name = {}, ""
  c.data.num_labeled, c.data.val_size = -1, 256
  c.data.max_train, c.data.max_test = 1024, 256
  for part in ("teacher", "student"):
    c[part].model = dict(SMOKE["cifar_resnet"])
    c[part].steps = 24
    c[part].optimizer.schedule = dict(c[part].optimizer.schedule,
                                      boundaries=(1, 1.2, 1.4))
  c.eval.every = 0.5
  c.teacher.kind = "multi"  # One teacher for both generated tasks.
  c.feature.weight = min(c.feature.weight, 10.0)  # Two tasks, 24 steps.
  if c.dkd.warmup_steps:
    c.dkd.warmup_steps = 8
