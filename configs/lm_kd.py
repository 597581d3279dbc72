"""Token-level KD: a language-model task and two classification tasks on
Rotten Tomatoes, each from its own teacher, into one causal-LM student.

Tasks on every snippet: `next_word` (a sequence task: the next word at
each position, over a 10k vocabulary), `subjective` and `polarity` (see
`mtkd.data.rotten_tomatoes`). Teachers, one per task: a 2-layer causal
Transformer LM for `next_word`, text CNNs for the two classification
tasks. The student is a 1-layer causal Transformer with three heads: the
LM head reads every position, the classification heads the last word's
state. The LM teacher's cache keeps, per token, 64 words drawn from its
distribution at T = 2 with their counts (`cache.tail='sampled'`, README:
Logit cache): 0.64 % of its dense float32 logits, the best mode for this
flat a teacher in experiments/README.md's language-model table.

Needs `bash scripts/get_rotten_tomatoes.sh`. The models' `vocab_size`
must equal `data.vocab_size` (override them together). Its full run has
not been measured yet; the cache and student settings follow
experiments/bench_lm_sparse.py, whose table is in experiments/README.md.

Run:
  python -m mtkd.main --config=configs/lm_kd.py --workdir=W
Smoke run (CI; generated token sequences, `synthetic_text`):
  python -m mtkd.main --config=configs/lm_kd.py:smoke --workdir=/tmp/lm
"""

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg

VOCAB = 10000
LM_TASK = "next_word"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False)
  c = defaults.base_config()
  c.data.name = "rotten_tomatoes"
  c.data.vocab_size = VOCAB
  c.data.max_len = 32
  c.data.lm_task = LM_TASK
  c.data.num_labeled = 1000  # Classification labels; LM targets are text.
  c.data.transfer_set = True
  c.teacher.kind = "single"
  c.teacher.model = dict(name="text_cnn", vocab_size=VOCAB, embed_dim=64,
                         channels=128, width=3, hidden=128, dropout=0.5)
  c.teacher.models = {LM_TASK: dict(name="causal_lm", vocab_size=VOCAB,
                                    max_len=32, dim=128, depth=2, heads=4,
                                    dropout=0.1)}
  # ~2.4 epochs: a word-level LM on 10.9k short texts overfits fast
  # (experiments/bench_lm_sparse.py: 17 epochs of 3k texts reached a test
  # perplexity of 1.2e5, 2 epochs of all texts 317).
  c.teacher.steps = 200
  c.student.model = dict(name="causal_lm", vocab_size=VOCAB, max_len=32,
                         dim=64, depth=1, heads=2)
  c.student.steps = 400
  c.distill.temperature = 2.0
  c.distill.alpha = 0.5
  c.cache.dtype = "bfloat16"
  c.cache.top_k = 64
  c.cache.tail = "sampled"
  c.cache.shard_size = 256  # 256 x 32 x 10k float32 logits: 330 MB a shard.
  c.eval_batch_size = 256
  c.data.max_test = 1000  # Dense test logits: 1000 x 32 x 10k floats.

  if args["smoke"]:
    defaults.smoke(c, data="synthetic_text")
    c.data.synthetic = dict(vocab=64, length=12, num_train=512,
                            num_test=128)
    c.data.max_train, c.data.max_test = 0, 0
    c.teacher.steps = c.student.steps = 20
    c.checkpoint_every = c.log_every = 10
    small = dict(vocab_size=64, max_len=12)
    c.teacher.model = dict(name="bag_of_embeddings", vocab_size=64,
                           embed_dim=8, hidden=16)
    c.teacher.models = {LM_TASK: dict(name="causal_lm", dim=16, depth=2,
                                      heads=2, **small)}
    c.student.model = dict(name="causal_lm", dim=16, depth=1, heads=2,
                           **small)
    c.cache.top_k = 4
  return c
