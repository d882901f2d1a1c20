"""Llama-3.2-1B shape: the quickstart's schema with the model at real scale.

  d_model 2048, 16 layers, 32 query / 8 kv heads of 64, SwiGLU 8192,
  vocabulary 128256, RoPE theta 500000, tied embeddings: 1.24e9 parameters.

Compute in bfloat16 (fp32 master weights and AdamW moments), sequences of
2048 tokens, 256 per step (0.5M tokens), full-sharded (fsdp) over every
device, each block rematerialised in the backward pass, the layers under one
scanned body (model.scan_layers: compile time does not grow with depth;
set it False to import or export Hugging Face checkpoints). Its first use is
ahead-of-time compilation for TPU slices:

  python -m tools.aot_compile --config=experiments/configs/llama3_1b.py --topology=v5e-16

Training it for real needs a tokenizer with 128256 ids (data.vocab and
data.vocab_path); the quickstart's byte-level pydoc data only fills ids < 259.
"""
import ml_collections

from experiments.configs import lm_quickstart


def get_config() -> ml_collections.ConfigDict:
  c = lm_quickstart.get_config()
  c.model.update(dict(
      vocab_size=128_256, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
      head_dim=64, d_ff=8192, rope_theta=500_000.0, tie_embeddings=True,
      dtype="bfloat16", remat="full", scan_layers=True))
  c.data.update(dict(seq_len=2048, global_batch_size=256))
  c.mesh.shape = dict(data=1, fsdp=-1, tensor=1)
  c.schedule.update(dict(peak_lr=3e-4, warmup_steps=2000))
  c.trainer.update(dict(total_steps=100_000, log_every=100, eval_every=2000))
  c.checkpoint.update(dict(every=1000, keep=3))
  return c
