"""Every config file loads (plain and smoke), is lockable, and names only
registered components."""

import glob
import importlib.util
import os

import pytest

from mtkd import models
from mtkd.methods import objectives, weighting
from mtkd.stages import plan, teachers
from mtkd.train import optim

CONFIGS = sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
    "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_loads_and_references_registered_components(path, arg):
  mod = _load(path)
  assert "python -m mtkd.main" in mod.__doc__  # Reproduction command.
  c = mod.get_config(arg)
  c.lock()
  with pytest.raises(AttributeError):
    c.studnet = 1  # A typo cannot add a key.
  assert c.teacher.kind in teachers.LAYOUTS
  for part in (c.teacher, c.student):
    assert part.model.name in models.TRUNKS
    assert part.optimizer.name in optim.OPTIMIZERS
  # Every plug-in builds from its own settings block (validated there).
  for s in plan.student_stages(c).values():
    objectives.build(s["objective"], c)
  weighting.build(c, ["a", "b"])


def test_unknown_config_arg_is_rejected():
  with pytest.raises(ValueError, match="Unknown config arg"):
    _load(CONFIGS[0]).get_config("smok")
