"""RAG datastore leakage study (Qi et al., "Follow My Instruction and Spill the
Beans"): a BM25 RAG system over public text plus planted private records, LMs
of several sizes trained here (instruction-tuned on synthetic RAG data, and a
plain-text control), the copy-the-context attack with anchor queries, and
defences, all measured with ROUGE-L, BLEU, token F1, edit similarity and
verbatim reconstruction.

  python -m experiments.launch --config=experiments/configs/rag_leakage.py \
      --workdir=runs/rag_leakage
  python -m experiments.launch --config=experiments/configs/rag_leakage.py:tiny \
      --workdir=/tmp/rag_tiny

Variants: `default` (three byte-level LM sizes plus a control; several minutes
per model on a 2-core CPU), `long` (S and L trained 4x longer on a
mix that adds `copy_random`: copying random strings, which only attending to the
context predicts), `tiny` (a smoke test: a few training steps on
small data; numbers are not findings), `curriculum` (S, M and L instruction
models and the M and L controls, 600 steps of batch 16 on the `long` mix, each
instruction model after a copy curriculum of 1600 steps: see `c.curriculum`). `hf_dirs` adds Hugging Face
Llama-family checkpoint directories to the models evaluated (not trained).
Needs the `studies` extra (bm25s, rouge-score, sacrebleu).
"""
import ml_collections

from experiments.configs import lm_quickstart

SIZES = {   # byte-level transformer shapes, smallest first
    "S": dict(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=192),
    "M": dict(d_model=96, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=24, d_ff=288),
    "L": dict(d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, d_ff=384),
}
TINY_SIZES = {
    "S": dict(d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8, d_ff=32),
    "M": dict(d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64),
    "L": dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64),
}


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
  if variant not in ("default", "long", "curriculum", "tiny"):
    raise ValueError(f"unknown variant {variant!r}: default, long, curriculum or tiny")
  tiny = variant == "tiny"
  long = variant == "long"
  curriculum = variant == "curriculum"
  c = ml_collections.ConfigDict()
  c.runner = "experiments.rag_leakage.rag_runner"
  c.variant = variant
  c.smoke = tiny    # the report labels its numbers as a smoke test, not findings
  c.seed = 0

  c.datastore = ml_collections.ConfigDict(dict(
      num_records=6 if tiny else 32,     # planted private records
      max_public_docs=40 if tiny else 400,
      chunk_size=16, chunk_overlap=3,    # words (a record is <= 16 words: one chunk)
      top_k=1,                           # chunks retrieved per query
      seed=0,
  ))
  c.data = ml_collections.ConfigDict(dict(
      train_people=80 if tiny else (16000 if long or curriculum else 6000),  # one-off people
      num_instructions=80 if tiny else (16000 if long or curriculum else 4000),
      plain_fraction=0.25,               # plain documents in the instruction models' mix
      mix=(dict(qa=0.3, copy=0.3, copy_random=0.25, refuse=0.1, refuse_qa=0.05)
           if long or curriculum
           else dict(qa=0.35, copy=0.45, copy_random=0.0, refuse=0.15, refuse_qa=0.05)),
      validation_fraction=0.05,
      # Loss on the answers only (the prompts are JSONL `prompt` fields), as in
      # supervised fine-tuning; False trains on prompt + answer.
      completion_only_loss=True,
      seed=1,
  ))

  # Models: "<size>:inst" trains on the instruction mix, "<size>:plain" on plain
  # documents only (the non-instruction-tuned control); sizes from `sizes`.
  # `long` has no plain control (its ~25 min of CPU did not fit the session that ran
  # it): add "L:plain" here for one; the default variant has it at 600 steps.
  c.models = (["S:inst", "L:plain"] if tiny else ["S:inst", "L:inst"] if long
              else ["S:inst", "M:inst", "M:plain", "L:inst", "L:plain"] if curriculum
              else ["S:inst", "M:inst", "L:inst", "L:plain"])
  c.sizes = ml_collections.ConfigDict(TINY_SIZES if tiny else SIZES)
  lm = lm_quickstart.get_config()
  lm.data.update(dict(seq_len=128 if tiny else 384, global_batch_size=8, eval_batches=2))
  lm.schedule.update(dict(peak_lr=5e-3, warmup_steps=2 if tiny else 30))
  steps = 4 if tiny else (2400 if long else 600)
  lm.trainer.update(dict(total_steps=steps, log_every=2 if tiny else 50,
                         eval_every=steps, steps_per_call=1 if tiny else 10,
                         print_progress=False, progress_every_s=1e9 if tiny else 60.0))
  lm.checkpoint.update(dict(every=steps, keep=1, async_save=False))
  if curriculum:
    lm.data.global_batch_size = 16
  c.lm = lm

  # Copy curriculum before instruction tuning: (format, steps) phases of
  # `experiments.rag_leakage.copy_diagnosis`, each starting from the previous
  # one's weights; the instruction run starts from the last. `for_plain`: the
  # plain-text control gets it too (off: the curriculum is itself copying on
  # request, which is instruction-like).
  c.curriculum = ml_collections.ConfigDict(dict(
      phases=([("words", 2)] if tiny else
              [("words", 800), ("words_request", 400), ("rag_random", 400)] if curriculum
              else []),
      batch_size=8,
      examples_per_phase=100 if tiny else 40000,
      for_plain=False,
  ))
  c.hf_dirs = []           # Hugging Face checkpoint directories evaluated as extra models
  c.hf_vocab = "byte"      # their vocabulary when a directory has no tokenizer.json
  c.hf_vocab_path = ""

  c.attack = ml_collections.ConfigDict(dict(
      public_anchors=2 if tiny else 16,  # attacks anchored on public chunks, besides the records
      max_new_tokens=48 if tiny else 360,
      batch_size=64,
  ))
  c.defences = ml_collections.ConfigDict(dict(
      conditions=["none", "refusal", "placement", "filter"],
      filter_min_words=8,      # output filter: withhold answers sharing >= this many words
  ))
  c.metrics = ml_collections.ConfigDict(dict(
      verbatim_min_words=5,    # runs of >= this many words count as verbatim copies
      reconstruction_threshold=0.9,
      bootstrap=200 if tiny else 2000,
  ))
  return c
