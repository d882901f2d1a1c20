"""Copy-task data that isolates why the study's small LMs do not copy their context.

  python -m experiments.rag_leakage.copy_diagnosis --out=/tmp/copy_diag

writes, for each format below, `<format>_train.jsonl` and
`<format>_validation.jsonl` as {"prompt", "completion"} records (loss on the
completion only), and prints the launch command that trains the study's S
model on it. A format is learned when the train accuracy nears 1: the copy is
then predicted, the rest of the loss is on nothing.

  chars          "C: <s>\\nA: " -> <s>, s = 10-40 random letters and digits
  words          as chars, s = `instruction_data.random_words` (3-8 words)
  words_request  "C: <s>\\nU: <copy request>\\nA: " -> <s>: a query between the
                 context and the answer, as in the RAG template
  rag_random     the study's `copy_random` instructions: the full RAG
                 template (system prompt, context, query)
"""
from __future__ import annotations

import numpy as np
from absl import app
from absl import flags

from experiments.rag_leakage import instruction_data

FORMATS = ("chars", "words", "words_request", "rag_random")
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
S_MODEL = "d_model=64 num_layers=2 num_heads=4 num_kv_heads=2 head_dim=16 d_ff=192"


def examples(fmt: str, num: int, seed: int) -> list[tuple[str, str]]:
  """`num` (prompt, completion) pairs of format `fmt` (see the module docstring)."""
  rng = np.random.default_rng(seed)
  if fmt == "rag_random":
    return instruction_data.make_examples(
        num, {"copy_random": 1.0}, [_placeholder_person()], ["unused"], chunk_size=16,
        chunk_overlap=3, context_chunks=1, seed=seed)
  out = []
  for _ in range(num):
    if fmt == "chars":
      s = "".join(_ALNUM[int(i)] for i in rng.integers(len(_ALNUM), size=int(rng.integers(10, 41))))
    elif fmt in ("words", "words_request"):
      s = instruction_data.random_words(rng)
    else:
      raise ValueError(f"format {fmt!r} must be one of {FORMATS}")
    if fmt == "words_request":
      request = instruction_data.COPY_REQUESTS[int(rng.integers(5))]   # those without an anchor
      out.append((f"C: {s}\nU: {request}\nA: ", s))
    else:
      out.append((f"C: {s}\nA: ", s))
  return out


def _placeholder_person():
  from experiments.rag_leakage import datastore  # pylint: disable=g-import-not-at-top
  return datastore.make_records(1, seed=0)[0]


def launch_command(prefix: str, workdir: str, steps: int = 800) -> str:
  overrides = [f"--config.model.{kv}" for kv in S_MODEL.split()] + [
      "--config.data.source=files", f"--config.data.train_path={prefix}_train.jsonl",
      f"--config.data.validation_path={prefix}_validation.jsonl",
      "--config.data.seq_len=384", "--config.data.global_batch_size=8",
      "--config.schedule.peak_lr=5e-3", "--config.schedule.warmup_steps=30",
      f"--config.trainer.total_steps={steps}", f"--config.checkpoint.every={steps}"]
  return ("python -m experiments.launch --config=experiments/configs/lm_quickstart.py "
          f"--workdir={workdir} " + " ".join(overrides))


def main(argv):
  del argv
  import os  # pylint: disable=g-import-not-at-top
  out = flags.FLAGS.out
  for fmt in FORMATS:
    docs = examples(fmt, flags.FLAGS.num_examples + 200, seed=flags.FLAGS.seed)
    prefix = os.path.join(out, fmt)
    instruction_data.write_jsonl(prefix + "_train.jsonl", docs[200:])
    instruction_data.write_jsonl(prefix + "_validation.jsonl", docs[:200])
    print(launch_command(prefix, os.path.join(out, "run_" + fmt)))


def _define_flags():
  flags.DEFINE_string("out", "/tmp/copy_diag", "where the JSONL files go")
  flags.DEFINE_integer("num_examples", 40000, "training examples per format")
  flags.DEFINE_integer("seed", 0, "data seed")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
