"""GLUE-style multi-dataset text KD (BAM!): one teacher per dataset, one
multi-task student over the mixed datasets.

Sources: GLUE's SST-2 (sentiment) and CoLA (acceptability), single
sentences, and MRPC and QQP (paraphrase), RTE and MNLI (entailment; MNLI's
test split is validation_matched) and QNLI (question answering), sentence
pairs (`config.data.pair_field`: encoded by the
tokenizer's pair template, [CLS] a [SEP] b [SEP] for BERT's), each a
Hugging Face `save_to_disk` folder, mixed with `config.data.name='mix'`
(each example labelled for its own task, -1 elsewhere; ids source << 40
| idx). GLUE hides its test labels, so the validation split is the test
split. One tokenizer for all (a local `tokenizer.json`). Teachers: a text CNN per task; student: a bag of
embeddings with a head per task, trained with BAM!'s teacher annealing
(targets move from the teacher's distribution to the label). arg
`sampling`: proportional (BAM!, MT-DNN), uniform or temperature (T = 2).
arg `vocab_size`: the tokenizer's size + 1 (PAD); mtkd refuses a smaller
one. Paper: Clark et al. 2019, 'BAM! Born-Again Multi-Task Networks'.

Data, on a machine with internet (then copy DIR here):
  for t in sst2 cola mrpc qqp rte mnli qnli: datasets.load_dataset("glue", t).save_to_disk(f"DIR/{t}")
  AutoTokenizer.from_pretrained("bert-base-uncased").backend_tokenizer.save("DIR/tokenizer.json")
Reproduce:
  python -m mtkd.main --config=configs/glue_mix.py:dir=DIR --workdir=workdirs/glue_mix
Smoke run (CI; SST-2, CoLA and MRPC stand-ins: generated sentences in
GLUE's Parquet schema and a word-level tokenizer with a pair template,
read through the real 'hf' + 'mix' sources):
  python -m mtkd.main --config=configs/glue_mix.py:smoke --workdir=/tmp/glue_mix
"""

import os

import ml_collections

from mtkd import defaults
from mtkd.configs_util import parse_arg
from mtkd.data import standin

# task -> (input field, pair field, the split read as test).
TASKS = {"sst2": ("sentence", "", "validation"),
         "cola": ("sentence", "", "validation"),
         "mrpc": ("sentence1", "sentence2", "validation"),
         "qqp": ("question1", "question2", "validation"),
         "rte": ("sentence1", "sentence2", "validation"),
         "mnli": ("premise", "hypothesis", "validation_matched"),
         "qnli": ("question", "sentence", "validation")}
SMOKE_TASKS = ("sst2", "cola", "mrpc")  # What mtkd/data/standin.py writes.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, smoke=False, dir="~/glue", vocab_size=30523,
                   max_len=64, sampling="proportional", steps=20000)
  root = standin.path("glue") if args["smoke"] else args["dir"]
  vocab = (standin.GLUE_TOKENIZER_SIZE + 1 if args["smoke"] else
           args["vocab_size"])
  c = defaults.base_config()
  tokenizer = dict(kind="hf_tokenizers", max_len=args["max_len"],
                   path=os.path.join(root, "tokenizer.json"))
  c.data.name, c.data.num_labeled, c.data.transfer_set = "mix", -1, False
  tasks = SMOKE_TASKS if args["smoke"] else tuple(TASKS)
  c.data.sources = {t: dict(
      name="hf", path=os.path.join(root, t), input_field=TASKS[t][0],
      pair_field=TASKS[t][1], id_field="idx", tasks={t: "label"},
      tokenizer=tokenizer, splits=dict(train="train", test=TASKS[t][2]))
      for t in tasks}
  c.data.sampling = args["sampling"]
  c.data.sampling_temperature = 2.0
  c.teacher.kind = "single"
  w = 1 / 16 if args["smoke"] else 1  # Smoke: 16x narrower models.
  c.teacher.model = dict(name="text_cnn", vocab_size=vocab,
                         embed_dim=int(128 * w), channels=int(256 * w),
                         hidden=int(256 * w))
  c.student.model = dict(name="bag_of_embeddings", vocab_size=vocab,
                         embed_dim=int(64 * w), hidden=int(128 * w))
  for part in ("teacher", "student"):
    c[part].steps = 30 if args["smoke"] else args["steps"]
    c[part].batch_size = 32
    c[part].optimizer = defaults.optimizer("adam", 1e-3)
  c.student.stages = {"student": dict(objective="anneal")}
  c.anneal.schedule = "linear"
  if args["smoke"]:
    c.data.standin = "glue"
    for s in c.data.sources.values():
      s.splits.test = "test"
  return c
