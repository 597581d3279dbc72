"""Online / auxiliary-model distillation: deep mutual learning.

A main and an auxiliary student (same architecture) train together in one
pure step, each on labels plus the other's softened predictions: L =
l(y, f_main) + KL(p_aux || p_main) + lambda * (l(y, f_aux) + KL(p_main ||
p_aux)). No precomputed teacher. arg `aux_only`: kl_weight=0, i.e. the
plain auxiliary-loss form L = l(y, f_main) + lambda * l(y, f_aux).

Paper: Zhang et al. 2018, 'Deep Mutual Learning'.
Reproduce:
  python -m mtkd.main --config=configs/dml.py --workdir=workdirs/dml
Smoke run (CI):
  python -m mtkd.main --config=configs/dml.py:smoke --workdir=/tmp/dml
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, aux_only=False)
  c = defaults.base_config()
  # Labelled rows only: on unlabelled rows the peers' only loss would be
  # their mutual KL, and both collapse to uniform (measured: 11.8 % on
  # MultiFashion with the transfer set, experiments/README.md).
  c.student.stages = {"student": dict(objective="mutual", data="labelled")}
  c.mutual.peers = 1
  c.mutual.aux_weight = 1.0
  if args["aux_only"]:
    c.mutual.kl_weight = 0.0

  if args["smoke"]:
    defaults.smoke(c, data='digits')
  return c
