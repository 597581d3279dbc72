"""The quickstart student and its distillation step in plain PyTorch.

A reference for `bench_torch_vs_jax.py`: MLP 1296 -> 128 (ReLU) -> one
10-class head per task, loss per task alpha*T^2*KL(teacher_T || student_T) +
(1-alpha)*CE (batch means, summed over tasks), Adam. The same math as mtkd's
`distill` objective with one teacher and every example labelled. Needs torch
(experiments/requirements.txt).
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Student(nn.Module):
  """Flatten, Dense(hidden) + ReLU, then a linear head per task."""

  def __init__(self, in_dim: int, hidden: int, heads: Mapping[str, int]):
    super().__init__()
    self.trunk = nn.Linear(in_dim, hidden)
    self.heads = nn.ModuleDict({t: nn.Linear(hidden, n)
                                for t, n in heads.items()})

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h = F.relu(self.trunk(x.flatten(1)))
    return {t: head(h) for t, head in self.heads.items()}


def distill_loss(logits: Mapping[str, torch.Tensor],
                 teacher: Mapping[str, torch.Tensor],
                 labels: Mapping[str, torch.Tensor], tasks: Sequence[str],
                 temperature: float, alpha: float) -> torch.Tensor:
  """Sum over tasks of the batch mean of alpha*T^2*KL + (1-alpha)*CE."""
  total = logits[tasks[0]].new_zeros(())
  for t in tasks:
    log_p_s = F.log_softmax(logits[t] / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher[t] / temperature, dim=-1)
    kd = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    ce = F.cross_entropy(logits[t], labels[t])
    total = total + alpha * temperature**2 * kd + (1 - alpha) * ce
  return total


def make_step(model: Student, opt: torch.optim.Optimizer,
              tasks: Sequence[str], temperature: float, alpha: float):
  """`step(x, teacher, labels) -> loss` (one Adam update)."""

  def step(x, teacher, labels):
    opt.zero_grad(set_to_none=True)
    loss = distill_loss(model(x), teacher, labels, tasks, temperature, alpha)
    loss.backward()
    opt.step()
    return loss

  return step


def load_flax_params(model: Student, params: Mapping) -> None:
  """Copies mtkd's MLP student parameters (Flax layout: kernel [in, out])
  into `model`, so both start from the same point."""
  p = params.get("model", params)

  def copy(layer: nn.Linear, dense: Mapping) -> None:
    with torch.no_grad():
      layer.weight.copy_(torch.from_numpy(np.asarray(dense["kernel"]).T))
      layer.bias.copy_(torch.from_numpy(np.asarray(dense["bias"])))

  copy(model.trunk, p["trunk"]["Dense_0"])
  for t, head in model.heads.items():
    copy(head, p[f"head_{t}"])
