"""MatFormer study: a nested LM, independently trained LMs of each granularity's
size on the same token budget, Mix'n'Match, consistency and speculative decoding.

  python -m experiments.launch --config=experiments/configs/matformer_small.py \
      --workdir=runs/matformer_small
  python -m experiments.launch --config=experiments/configs/matformer_small.py:tiny \
      --workdir=runs/matformer_tiny

Variants: `small` (default; a smoke-scale study sized for a 2-core CPU, about
an hour: its numbers show the pipeline works, they are not findings at the
paper's scale) and `tiny` (minutes, for tests). Every model trains through
`experiments.lm.run` (the launch path) on the offline pydoc corpus with the
byte vocabulary; `lm` is the quickstart's schema with `model.name=matformer`.
"""
import ml_collections

from experiments.configs import lm_quickstart

VARIANTS = ("small", "tiny")


def get_config(variant: str = "small") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}: one of {VARIANTS}")
  tiny = variant == "tiny"
  c = ml_collections.ConfigDict()
  c.runner = "experiments.matformer.matformer_study"
  c.variant = variant
  c.smoke = True        # CPU-sized: the report labels its numbers as a smoke test

  lm = lm_quickstart.get_config()
  d_ff = 128 if tiny else 512
  lm.model = ml_collections.ConfigDict(dict(
      name="matformer", vocab_size=384,
      d_model=64 if tiny else 128, num_layers=2 if tiny else 4,
      num_heads=4, num_kv_heads=2, head_dim=16 if tiny else 32, d_ff=d_ff,
      rope_theta=10_000.0, tie_embeddings=True, dtype="float32", remat="none",
      granularities=[d_ff // 8, d_ff // 4, d_ff // 2, d_ff],
      mode="joint",          # joint: sum_i w_i L(M_i) each step | sampled: one M_i per step
      loss_weights=[],       # joint: default 1/g each
      sample_probs=[],       # sampled: default uniform
      sample_seed=0,
      interleave=8,          # mlp blocks; tensor-parallel shards must divide it
  ))
  lm.data.seq_len = 64 if tiny else 128
  lm.data.global_batch_size = 8 if tiny else 16
  lm.data.eval_batches = 2 if tiny else 8
  lm.trainer.total_steps = 30 if tiny else 400
  lm.trainer.log_every = 10 if tiny else 50
  lm.trainer.eval_every = 30 if tiny else 200
  lm.trainer.print_progress = False
  lm.schedule.warmup_steps = 5 if tiny else 30
  lm.checkpoint.every = 30 if tiny else 200
  lm.checkpoint.async_save = False
  c.lm = lm

  c.study = ml_collections.ConfigDict(dict(
      baselines=True,              # plain LMs of each granularity's d_ff, same steps and batch
      mixnmatch_configs=6 if tiny else 24,   # random per-layer choices besides the uniform ones
      mixnmatch_seed=0,
      eval_batches=2 if tiny else 8,         # validation batches for every comparison
      spec_prompts=4 if tiny else 8,         # speculative decoding: prompts (a batch)
      spec_prompt_len=16 if tiny else 32,    # tokens of validation text per prompt
      spec_new_tokens=16 if tiny else 64,
      spec_gammas=[3] if tiny else [2, 4],
      spec_temperature=1.0,                  # the sampled runs (greedy runs too)
      spec_repeats=1 if tiny else 3,         # timed runs after a warm-up (median)
      bench_batch=4 if tiny else 8,          # FLOPs / tokens-per-second benchmark
      bench_repeats=3 if tiny else 10,
      hf_export=True,                        # export the smallest extracted LM and reload it
  ))
  return c
