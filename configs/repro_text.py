"""Text multi-task KD on Rotten Tomatoes: text-CNN teachers -> bag of
embeddings student.

Two tasks on each snippet: `subjective` (plot synopsis vs review, every
row) and `polarity` (rotten vs fresh; plot rows have no label). One
single-task text-CNN teacher per task, trained on all train labels; the
student, a bag-of-embeddings model with two heads, sees 1000 labelled rows
and learns from the teachers' cached logits on the other ~9.9k train rows
(transfer set). Split by movie (10,858 train / 3,033 test rows).

Needs `bash scripts/get_rotten_tomatoes.sh`. `data.vocab_size` and
`data.max_len` live in this config so they can be overridden; the models'
`vocab_size` must equal `data.vocab_size` (override both together).

Reproduce (3 seeds: experiments/repro_text.py):
  python -m mtkd.main --config=configs/repro_text.py --workdir=W --config.seed=0
Smoke run (CI):
  python -m mtkd.main --config=configs/repro_text.py:smoke --workdir=/tmp/rt
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg

VOCAB = 10000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.data.name = "rotten_tomatoes"
  c.data.vocab_size = VOCAB
  c.data.max_len = 48
  c.data.num_labeled = 1000
  c.data.transfer_set = True
  c.teacher.kind = "single"
  c.teacher.model = dict(name="text_cnn", vocab_size=VOCAB, embed_dim=64,
                         channels=128, width=3, hidden=128, dropout=0.5)
  c.teacher.steps = 600      # ~7 epochs of 10.9k rows at batch 128.
  c.student.model = dict(name="bag_of_embeddings", vocab_size=VOCAB,
                         embed_dim=32, hidden=64)
  c.student.steps = 1000
  c.distill.temperature = 2.0
  c.distill.alpha = 0.5
  c.eval_batch_size = 1000

  if args["smoke"]:
    defaults.smoke(c, data="rotten_tomatoes")
    small = 2000
    c.data.vocab_size = small
    c.data.max_len = 32
    c.teacher.model = dict(c.teacher.model, vocab_size=small, embed_dim=16,
                           channels=16, hidden=16)
    c.student.model = dict(c.student.model, vocab_size=small, embed_dim=8,
                           hidden=16)
  return c
