"""CORE-style in-context-learning evaluation of a checkpoint.

  python -m experiments.launch --config=experiments/configs/eval_core.py \
      --config.checkpoint=runs/quickstart --workdir=runs/eval_quickstart
  python -m experiments.launch --config=experiments/configs/eval_core.py \
      --config.checkpoint=hf:/path/to/hf_dir --config.tasks_file=my_icl_tasks.yaml

`checkpoint`: a run directory of experiments.lm (newest verified checkpoint),
hf:<dir> (Llama-family safetensors + tokenizer.json), or `random` (a random
init of `model`: a smoke test, CORE ~ 0). `tasks_file`: a DCLM/llm-foundry task
list (YAML or JSON with `icl_tasks`); empty = the built-in tasks written by
`tools/make_icl_tasks.py` into data_dir/icl_tasks (offline text). Variant
`:tiny` = the test fixtures (tests/fixtures/icl) and a tiny random model.
"""
import os

import ml_collections

from framework import sharding

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "icl",
                        "tasks.json")


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.eval.core_eval"
  c.seed = 0
  c.checkpoint = ""
  c.tasks_file = ""
  c.task_labels = ""        # comma-separated subset of the task list's labels ("": all)
  c.num_fewshot = ""        # e.g. "0,5": overrides every task's shot counts ("": the list's)
  c.max_examples = 100      # per task (0: all)
  c.fewshot_seed = 1234
  c.data_dir = "~/.cache/armillary/data"
  c.batch_size = 32
  c.max_seq_len = 1024      # longer prompts lose their oldest context tokens
  c.max_tokens_per_batch = 0   # >0: fewer rows per batch for long buckets
  c.min_length_bucket = 16     # rows are padded to buckets >= this (larger: fewer compiles)
  c.progress_every_s = 10.0
  # only for checkpoint=random: the model to initialise (registry spec)
  c.model = ml_collections.ConfigDict(dict(
      name="transformer", vocab_size=384, d_model=32, num_layers=2, num_heads=2,
      num_kv_heads=1, head_dim=16, d_ff=64))
  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = sharding.DEFAULT_RULES
  if variant == "tiny":
    c.checkpoint = "random"
    c.tasks_file = os.path.normpath(FIXTURES)
    c.max_examples = 0
    c.batch_size = 8
    c.max_seq_len = 256
    c.min_length_bucket = 256    # one compilation for the whole run
  elif variant != "default":
    raise ValueError(f"eval_core variant {variant!r} must be 'default' or 'tiny'")
  return c
