"""Task kinds: what a head predicts, how it learns from labels and teachers.

A task is classification (softmax over C classes; integer labels, -1 = no
label), multi-label / binary (L independent sigmoid outputs; 0/1 labels, a
row with any -1 has no label), regression (D real outputs; float targets,
a row with any NaN has no target) or sequence (a softmax over a vocabulary
of V at each of L positions: labels `[B, L]`, logits `[B, L, V]`; -1 marks
a position with nothing to predict, such as padding). Each kind supplies the per-example
supervised loss, the distillation loss against a stack of K teachers
`[B, K, out]` (teachers are averaged in probability space for the two
probabilistic kinds and in output space for regression), a training metric,
and the host-side (numpy, float64) evaluation used in results.json.

Invariant: every jax function returns one value per example `[B]` and gives
0 (with a finite gradient) on rows without a label, so objectives can mask
and count without knowing the kind. A sequence task keeps it through its
token view (`token_view`): each real position is one row of a
classification over the vocabulary, so its terms and metrics are (sum,
count) over tokens, exact across devices and hosts like every other term.
"""

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mtkd.methods import losses
from mtkd.registry import Registry

KINDS: Registry = Registry("task kind")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Static per-task settings. `num_classes` is the head's output size:
  classes, labels (multi-label) or target dimensions (regression)."""
  name: str
  num_classes: int
  weight: float = 1.0
  temperature: float = 1.0
  alpha: float = 0.5
  kind: str = "classification"
  label_smoothing: float = 0.0  # Of the label loss (classes, multi-label).


@dataclasses.dataclass(frozen=True)
class Kind:
  """The functions one task kind needs; see the module docstring."""
  name: str
  labelled: Callable[[jax.Array], jax.Array]        # labels -> [B] bool
  # outputs, labels, label smoothing -> [B]
  loss: Callable[[jax.Array, jax.Array, float], jax.Array]
  kd: Callable[[jax.Array, jax.Array, float], jax.Array]  # s, [B,K,.], T
  score: Callable[[jax.Array, jax.Array], jax.Array]  # train metric [B]
  score_name: str
  evaluate: Callable[[np.ndarray, np.ndarray], dict]  # host, labelled rows
  agreement: Callable[[np.ndarray, np.ndarray, float], dict]  # host
  higher_is_better: bool  # of `main` in `evaluate`'s result
  main: str
  per_token: bool = False  # Rows are tokens (`token_view`).


# ------------------------------------------------------------ numpy (host)


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_log_sigmoid(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.minimum(x, 0) - np.log1p(np.exp(-np.abs(x)))


def _np_kl(teacher: np.ndarray, student: np.ndarray, t: float) -> float:
  lt, ls = _np_log_softmax(teacher / t), _np_log_softmax(student / t)
  return float(np.mean(np.sum(np.exp(lt) * (lt - ls), -1)))


def _np_bernoulli_kl(teacher: np.ndarray, student: np.ndarray, t: float
                     ) -> float:
  kl = 0.0
  for sign in (1.0, -1.0):  # The p and 1-p halves.
    lt = _np_log_sigmoid(sign * teacher / t)
    ls = _np_log_sigmoid(sign * student / t)
    kl = kl + np.exp(lt) * (lt - ls)
  return float(np.mean(np.sum(kl, -1)))


def _eval_classification(logits, labels) -> dict:
  logp = _np_log_softmax(logits)
  return {"accuracy": float(np.mean(logits.argmax(-1) == labels)),
          "loss": float(-np.mean(logp[np.arange(len(labels)), labels])),
          "count": len(labels)}


def _eval_multilabel(logits, labels) -> dict:
  y = labels.astype(np.float64)
  nll = -(y * _np_log_sigmoid(logits) + (1 - y) * _np_log_sigmoid(-logits))
  return {"accuracy": float(np.mean((logits > 0) == (labels > 0))),
          "exact_match": float(np.mean(np.all((logits > 0) == (labels > 0),
                                              -1))),
          "loss": float(np.mean(np.sum(nll, -1))), "count": len(labels)}


def _eval_regression(pred, target) -> dict:
  err = np.asarray(pred, np.float64) - target
  return {"mse": float(np.mean(np.mean(err**2, -1))),
          "mae": float(np.mean(np.mean(np.abs(err), -1))),
          "loss": float(np.mean(np.mean(err**2, -1))), "count": len(target)}


def _agree_classification(student, teacher, t) -> dict:
  return {"agreement": float(np.mean(student.argmax(-1) == teacher.argmax(-1))),
          "kl": _np_kl(teacher, student, t), "kl_t1": _np_kl(teacher, student,
                                                            1.0)}


def _agree_multilabel(student, teacher, t) -> dict:
  return {"agreement": float(np.mean((student > 0) == (teacher > 0))),
          "kl": _np_bernoulli_kl(teacher, student, t),
          "kl_t1": _np_bernoulli_kl(teacher, student, 1.0)}


def _agree_regression(student, teacher, t) -> dict:
  del t
  return {"mse_to_teacher": float(np.mean((np.asarray(student, np.float64)
                                           - teacher)**2))}


# ------------------------------------------------------------------ kinds


def _multilabel_labelled(labels):
  return jnp.all(labels >= 0, axis=-1)


def _regression_labelled(targets):
  return jnp.all(jnp.isfinite(targets), axis=-1)


KINDS.register("classification")(Kind(
    name="classification", labelled=lambda y: y >= 0,
    loss=losses.cross_entropy, kd=losses.softmax_kd,
    score=losses.correct, score_name="accuracy",
    evaluate=_eval_classification, agreement=_agree_classification,
    higher_is_better=True, main="accuracy"))

KINDS.register("multilabel")(Kind(
    name="multilabel", labelled=_multilabel_labelled,
    loss=losses.binary_cross_entropy, kd=losses.sigmoid_kd,
    score=lambda z, y: jnp.mean(((z > 0) == (y > 0)).astype(jnp.float32), -1),
    score_name="accuracy", evaluate=_eval_multilabel,
    agreement=_agree_multilabel, higher_is_better=True, main="accuracy"))

KINDS.register("regression")(Kind(
    name="regression", labelled=_regression_labelled,
    loss=lambda p, y, smoothing: losses.squared_error(p, y),
    kd=lambda s, t, temperature: losses.regression_kd(s, t),
    score=lambda p, y: -losses.squared_error(p, y), score_name="neg_mse",
    evaluate=_eval_regression, agreement=_agree_regression,
    higher_is_better=False, main="mse"))


KINDS.register("sequence")(Kind(
    name="sequence", labelled=lambda y: y >= 0,
    loss=losses.cross_entropy, kd=losses.softmax_kd,
    score=losses.correct, score_name="accuracy",
    # Per chunk of token rows; `_evaluate_tokens` sums them, adds perplexity.
    evaluate=_eval_classification, agreement=_agree_classification,
    higher_is_better=True, main="accuracy", per_token=True))


KIND_NAMES = tuple(KINDS.names())
# Kinds whose outputs are softmax logits over classes (a vocabulary): what
# top-k caches, temperatures and agreement apply to.
SOFTMAX_KINDS = ("classification", "sequence")


def kind(spec_or_name) -> Kind:
  name = spec_or_name.kind if isinstance(spec_or_name, TaskSpec) else (
      spec_or_name)
  return KINDS.get(name)


def token_view(spec: TaskSpec, logits, labels, mask, teacher=None):
  """A sequence task's arrays as rows of tokens (other kinds unchanged):
  logits `[B, L, V]` -> `[B*L, V]`, labels `[B, L]` -> `[B*L]`, the row
  mask `[B]` -> `[B*L]` (a token counts where its row does and its label
  is >= 0: padding positions are neither labelled nor distilled), teacher
  `[B, K, L, V]` -> `[B*L, K, V]`."""
  if not kind(spec).per_token:
    return logits, labels, mask, teacher
  b, length = labels.shape
  mask = (mask[:, None] * (labels >= 0)).reshape(b * length)
  logits = logits.reshape(b * length, logits.shape[-1])
  if teacher is not None:
    teacher = jnp.swapaxes(teacher, 1, 2)
    teacher = teacher.reshape(b * length, *teacher.shape[2:])
  return (logits, labels.reshape(b * length), mask.astype(jnp.float32),
          teacher)


def ensemble(kind_name: str, stack: np.ndarray) -> np.ndarray:
  """Host: K teachers' outputs `[N, K, out]` -> one output `[N, out]` whose
  distribution at T=1 is the teachers' mean (probability space)."""
  stack = np.asarray(stack, np.float64)
  if stack.shape[1] == 1:
    return stack[:, 0]
  if kind_name in ("classification", "sequence"):
    logp = _np_log_softmax(stack)
    m = logp.max(1, keepdims=True)
    return (m + np.log(np.mean(np.exp(logp - m), 1, keepdims=True)))[:, 0]
  if kind_name == "multilabel":
    p = np.mean(1 / (1 + np.exp(-stack)), 1).clip(1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)
  return stack.mean(1)


def evaluate(spec: TaskSpec, outputs: np.ndarray, labels: np.ndarray,
             teacher: np.ndarray | None = None) -> dict:
  """results.json entry for one task and one model (labelled test rows;
  for a sequence task its real tokens: count and metrics are per token)."""
  k = kind(spec)
  outputs, labels = np.asarray(outputs), np.asarray(labels)
  if k.per_token:
    return _evaluate_tokens(spec, outputs, labels, teacher)
  keep = np.asarray(k.labelled(jnp.asarray(labels)))
  out = k.evaluate(outputs[keep], labels[keep])
  if teacher is not None:
    out.update(k.agreement(outputs, np.asarray(teacher), spec.temperature))
  return out


def _evaluate_tokens(spec: TaskSpec, outputs: np.ndarray, labels: np.ndarray,
                     teacher: np.ndarray | None, chunk: int = 8192) -> dict:
  """`evaluate` of a sequence task: the real tokens' metrics, summed over
  chunks of tokens, so the float64 work never holds [N * L, V] at once."""
  v = outputs.shape[-1]
  keep = labels.reshape(-1) >= 0
  rows = np.flatnonzero(keep)
  flat, y = outputs.reshape(-1, v), labels.reshape(-1)
  flat_t = None if teacher is None else np.asarray(teacher).reshape(-1, v)
  k = kind(spec)
  sums = collections.Counter()
  for s in range(0, len(rows), chunk):
    r = rows[s:s + chunk]
    part = k.evaluate(flat[r], y[r])
    sums["correct"] += part["accuracy"] * len(r)
    sums["nll"] += part["loss"] * len(r)
    if flat_t is not None:
      agree = k.agreement(flat[r], flat_t[r], spec.temperature)
      for key, value in agree.items():
        sums[key] += value * len(r)
  n = max(len(rows), 1)
  loss = sums["nll"] / n
  out = {"accuracy": sums["correct"] / n, "loss": loss,
         "count": len(rows), "perplexity": float(np.exp(loss))}
  if flat_t is not None:
    out.update({key: sums[key] / n for key in ("agreement", "kl", "kl_t1")})
  return out


def relative_gain(metrics: dict, reference: dict, specs) -> float:
  """Delta_m (%) of `{task: metrics}` against `{task: metrics}` of a
  reference; a reference main metric under 1e-3 in size counts as 1e-3, so
  a model at exactly 0 accuracy still gives a finite, ordered score."""
  per_task = []
  for s in specs:
    k = kind(s)
    m, ref = metrics[s.name][k.main], reference[s.name][k.main]
    sign = 1.0 if k.higher_is_better else -1.0
    per_task.append(sign * (m - ref) / max(abs(ref), 1e-3))
  return 100.0 * float(np.mean(per_task))


def delta_m(results: dict, specs, model: str, reference: str) -> float | None:
  """Multi-task Delta_m (%) of `model` against `reference`, LibMTL style.

  Per task: the mean over that task's metrics of (-1)^w (M - M_ref) / M_ref,
  w = 1 when lower is better; then the mean over tasks (per task first, so a
  task with more metrics does not weigh more). One metric per task here: the
  kind's main metric.
  """
  per_task = []
  for s in specs:
    k = kind(s)
    row = results.get(s.name, {})
    if model not in row or reference not in row:
      return None
    m, ref = row[model][k.main], row[reference][k.main]
    if ref == 0:
      return None
    sign = 1.0 if k.higher_is_better else -1.0
    per_task.append(sign * (m - ref) / abs(ref))
  return 100.0 * float(np.mean(per_task)) if per_task else None
