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


# CIFAR CNN students for `bench_cnn_vs_torch.py`: RepDistiller's models/
# resnet.py (CifarResNet) and models/wrn.py (WideResNet), layer for layer
# as mtkd.models.resnet (no conv bias; BatchNorm momentum 0.1, eps 1e-5).


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
  """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus the input (a strided 1x1
  conv + BN where the shape changes: `downsample`), then ReLU."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = _conv3x3(cin, cout, stride)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = _conv3x3(cout, cout)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    res = x if self.downsample is None else self.downsample(x)
    return F.relu(out + res)


class CifarResNet(nn.Module):
  """He et al.'s CIFAR ResNet (resnet20: depth 20, widths 16/16/32/64)."""

  def __init__(self, depth: int = 20, widths=(16, 16, 32, 64),
               num_classes: int = 100):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = _conv3x3(3, widths[0])
    self.bn1 = nn.BatchNorm2d(widths[0])
    cin = widths[0]
    for s, width in enumerate(widths[1:]):
      blocks = []
      for j in range(n):
        blocks.append(BasicBlock(cin, width, 2 if s and not j else 1))
        cin = width
      setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(x.mean((2, 3)))


class WideBlock(nn.Module):
  """Pre-activation BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, plus the
  input, or a strided 1x1 conv of the pre-activation (`convShortcut`)
  where the width changes."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = _conv3x3(cin, cout, stride)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = _conv3x3(cout, cout)
    self.convShortcut = None  # noqa: N815 - RepDistiller's name.
    if cin != cout:
      self.convShortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pre = F.relu(self.bn1(x))
    out = F.relu(self.bn2(self.conv1(pre)))
    out = self.conv2(out)
    return out + (x if self.convShortcut is None else self.convShortcut(pre))


class NetworkBlock(nn.Module):
  def __init__(self, n: int, cin: int, cout: int, stride: int):
    super().__init__()
    self.layer = nn.Sequential(*(
        WideBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1)
        for j in range(n)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer(x)


class WideResNet(nn.Module):
  """WRN-depth-widen (wrn_16_2: stem 16, stages 32/64/128), final BN-ReLU."""

  def __init__(self, depth: int = 16, widen: int = 2, num_classes: int = 100):
    super().__init__()
    n, w = (depth - 4) // 6, (16, 16 * widen, 32 * widen, 64 * widen)
    self.conv1 = _conv3x3(3, w[0])
    self.block1 = NetworkBlock(n, w[0], w[1], 1)
    self.block2 = NetworkBlock(n, w[1], w[2], 2)
    self.block3 = NetworkBlock(n, w[2], w[3], 2)
    self.bn1 = nn.BatchNorm2d(w[3])
    self.fc = nn.Linear(w[3], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.block3(self.block2(self.block1(self.conv1(x))))
    return self.fc(F.relu(self.bn1(x)).mean((2, 3)))


CNNS = {"resnet20": lambda c: CifarResNet(20, (16, 16, 32, 64), c),
        "wrn_16_2": lambda c: WideResNet(16, 2, c)}


def decayed_sgd(model: nn.Module, lr: float, momentum: float,
                weight_decay: float) -> torch.optim.SGD:
  """SGD whose weight decay reaches conv and linear weights only (mtkd's
  `optim.decay_mask`: kernels; never biases or BatchNorm parameters)."""
  decay, rest = [], []
  for module in model.modules():
    for name, p in module.named_parameters(recurse=False):
      kernel = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
      (decay if kernel else rest).append(p)
  return torch.optim.SGD(
      [{"params": decay, "weight_decay": weight_decay},
       {"params": rest, "weight_decay": 0.0}], lr=lr, momentum=momentum)


def make_cnn_step(model: nn.Module, opt: torch.optim.Optimizer, task: str,
                  temperature: float, alpha: float):
  """`step(x, teacher, labels) -> loss` for a one-head model: the batch
  mean of alpha*T^2*KL + (1-alpha)*CE (`distill_loss`), one update."""

  def step(x, teacher, labels):
    opt.zero_grad(set_to_none=True)
    loss = distill_loss({task: model(x)}, {task: teacher}, {task: labels},
                        (task,), temperature, alpha)
    loss.backward()
    opt.step()
    return loss

  return step


def _flax_leaf(module: nn.Module, name: str, array) -> torch.Tensor:
  """A Flax leaf in the PyTorch layout of `module`'s parameter `name`."""
  a = np.array(array, np.float32)  # A writable copy.
  if isinstance(module, nn.Conv2d) and name == "weight":
    a = a.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
  elif isinstance(module, nn.Linear) and name == "weight":
    a = a.T  # [in, out] -> [out, in]
  return torch.from_numpy(np.ascontiguousarray(a))


def load_flax_cnn(model: nn.Module, leaves: Mapping[str, object]) -> None:
  """Copies Flax variables into `model`: `leaves` maps each PyTorch
  state_dict key (`layer1.0.conv1.weight`, `bn1.running_var`, ...) to the
  Flax array that fills it (conv kernel, Dense kernel, BatchNorm scale /
  bias, batch_stats mean / var). Every key must be given, once."""
  modules = dict(model.named_modules())
  keys = {k for k in model.state_dict() if not k.endswith(
      "num_batches_tracked")}
  if set(leaves) != keys:
    raise ValueError(f"keys differ: missing {sorted(keys - set(leaves))}, "
                     f"unknown {sorted(set(leaves) - keys)}")
  state = model.state_dict()
  with torch.no_grad():
    for key, array in leaves.items():
      prefix, name = key.rsplit(".", 1) if "." in key else ("", key)
      value = _flax_leaf(modules[prefix], name, array)
      if tuple(value.shape) != tuple(state[key].shape):
        raise ValueError(f"{key}: Flax gives {tuple(value.shape)}, torch "
                         f"has {tuple(state[key].shape)}")
      state[key].copy_(value)
