"""Llama-3-8B shape: the quickstart's schema with the model at real scale.

  d_model 4096, 32 layers, 32 query / 8 kv heads of 128, SwiGLU 14336,
  vocabulary 128256, RoPE theta 500000, untied output head: 8.03e9 parameters.

Compute in bfloat16 (fp32 master weights and AdamW moments), sequences of
8192 tokens (Llama 3's context), 128 per step (1M tokens), full-sharded
(fsdp) over every device, each block rematerialised in the backward pass, the layers under one
scanned body (model.scan_layers: compile time does not grow with depth;
set it False to import or export Hugging Face checkpoints).
Its first use is ahead-of-time compilation for TPU slices:

  python -m tools.aot_compile --config=experiments/configs/llama3_8b.py \
      --topology=v5p-128 --sweep

Training it for real needs a tokenizer with 128256 ids (data.vocab and
data.vocab_path); the quickstart's byte-level pydoc data only fills ids < 259.
"""
import ml_collections

from experiments.configs import lm_quickstart


def get_config() -> ml_collections.ConfigDict:
  c = lm_quickstart.get_config()
  c.model.update(dict(
      vocab_size=128_256, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
      head_dim=128, d_ff=14_336, rope_theta=500_000.0, tie_embeddings=False,
      dtype="bfloat16", remat="full", scan_layers=True))
  c.data.update(dict(seq_len=8192, global_batch_size=128))
  c.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  c.schedule.update(dict(peak_lr=3e-4, warmup_steps=2000))
  c.trainer.update(dict(total_steps=100_000, log_every=100, eval_every=2000))
  c.checkpoint.update(dict(every=1000, keep=3))
  return c
