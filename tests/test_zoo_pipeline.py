"""Every model family trains as a teacher and as a student through the
whole pipeline (teacher, cache, baseline, student, evaluation), on tiny
generated data: each family teaches the next one in a ring."""

import numpy as np
import pytest

from configs import quickstart

IMAGES = [
    dict(name="cifar_resnet", depth=8, widths=(4, 4, 8, 8)),
    dict(name="wide_resnet", depth=10, widen=1),
    dict(name="vgg", stages=((4,), (8, 8), (8,))),
    dict(name="mobilenetv2", layout="cifar", width=0.5, last=16,
         setting=((1, 8, 1, 1), (6, 8, 2, 2)), dropout=0.0),
    dict(name="imagenet_resnet", layers=(1, 1), widths=(4, 8), stem=4,
         bottleneck=True),
    dict(name="vit", patch=4, dim=8, depth=2, heads=2),
]
TEXT = dict(name="transformer_encoder", vocab_size=64, max_len=16, dim=8,
            depth=2, heads=2, dropout=0.0)
RING = [(IMAGES[i], IMAGES[(i + 1) % len(IMAGES)]) for i in range(
    len(IMAGES))] + [(TEXT, dict(TEXT, depth=1))]


@pytest.mark.parametrize("teacher,student", RING,
                         ids=[f"{t['name']}->{s['name']}" for t, s in RING])
def test_family_teaches_and_learns(tmp_path, run_mtkd, teacher, student):
  c = quickstart.get_config("smoke")
  text = teacher["name"] == "transformer_encoder"
  c.data.name = "synthetic_text" if text else "synthetic_images"
  c.data.synthetic = dict(num_train=256, num_test=64) if text else dict(
      size=16, channels=3, classes=4, num_train=256, num_test=64)
  c.data.max_train, c.data.max_test, c.data.num_labeled = 256, 64, 64
  c.teacher.kind = "multi"
  c.teacher.model, c.student.model = teacher, student
  c.teacher.steps = c.student.steps = 4
  c.teacher.batch_size = c.student.batch_size = 32
  c.log_every = c.checkpoint_every = 4
  results = run_mtkd(c, tmp_path)
  for rows in results.values():
    assert set(rows) == {"teacher", "baseline", "student"}
    assert all(np.isfinite(v) for m in rows.values() for v in m.values())
