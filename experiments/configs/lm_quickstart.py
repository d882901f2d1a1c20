"""Quickstart: a ~3M-parameter byte-level LM on Python's own documentation.

  python -m experiments.launch --config=experiments/configs/lm_quickstart.py \
      --workdir=runs/quickstart

Trains in about two minutes on a 2-core CPU; on a GPU/TPU raise
`trainer.total_steps` and `data.global_batch_size`. Every key here is the schema
for LM runs: other LM configs start from this one and override values.
"""
import ml_collections

from framework import sharding


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.runner = "experiments.lm"
  c.seed = 0
  # "hf:/path/to/dir": start from a Hugging Face Llama/Mistral/Qwen2 safetensors
  # checkpoint; its config.json defines the model (config.model keeps dtype and
  # remat; other fields set there must agree). Ignored when resuming a run.
  c.init_from = ""

  # `name` picks the model from `models.registry`; the other keys are the
  # fields of its config dataclass (here `models.transformer.TransformerConfig`).
  c.model = ml_collections.ConfigDict(dict(
      name="transformer",
      vocab_size=384,        # 259 byte ids, padded to a multiple of 128
      d_model=256, num_layers=4, num_heads=8, num_kv_heads=2, head_dim=32, d_ff=768,
      rope_theta=10_000.0, tie_embeddings=True,
      dtype="float32",       # compute dtype: float32 | bfloat16 (params stay float32)
      remat="none",          # none | full | dots_saveable | dots_with_no_batch_dims_saveable
      scan_layers=False,     # True: one block body under nn.scan (compile time flat in depth)
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="pydoc",        # pydoc (built in, offline) | files | curated
      train_path="", validation_path="",   # files: JSONL with a `text` field, or text lines
      # curated: the --workdir of a `python -m data_pipelines.curate` run (its
      # output/*.jsonl.zst shards); documents whose id hashes into the first
      # `curated_validation_fraction` of the hash range are held out for eval.
      curated_dir="", curated_validation_fraction=0.1,
      data_dir="~/.cache/armillary/data",
      vocab="byte", vocab_path="",   # byte | sentencepiece | hf_tokenizer (tokenizer.json)
      task_name="",
      seq_len=256,
      global_batch_size=16,
      eval_batches=8,
  ))

  c.mesh = ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1)))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = sharding.DEFAULT_RULES

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0,
      momentum=0.9, kwargs={}))
  c.schedule = ml_collections.ConfigDict(dict(
      name="warmup_cosine", peak_lr=3e-3, warmup_steps=20, end_lr_fraction=0.1))

  c.trainer = ml_collections.ConfigDict(dict(
      total_steps=100, num_microbatches=1, log_every=10, eval_every=50,
      steps_per_call=1,      # >1: that many steps per dispatch (lax.scan), one batch each
      full_batch=False,      # True: reuse one batch every step (full-batch training)
      nan_policy="skip",     # skip | stop
      max_consecutive_skips=10,  # stop after this many skipped steps in a row (0: never)
      peak_flops=0.0,        # per device; 0 = vendor table, or measured matmul on CPU
      progress_every_s=10.0, print_progress=True,
  ))
  c.checkpoint = ml_collections.ConfigDict(dict(
      enabled=True, every=50, keep=2, async_save=True))
  return c
