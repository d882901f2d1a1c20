"""Exports a run's newest checkpoint as a Hugging Face safetensors checkpoint.

  python -m tools.export_hf --workdir=runs/quickstart --out=runs/quickstart/hf \
      [--step=N] [--dtype=bfloat16] [--max_shard_bytes=5000000000]

Reads the model config from the run's config.json (the one `experiments.lm`
records, with `init_from` already resolved), restores the newest checkpoint
that verifies (or --step) through `framework.checkpoint` onto all local
devices (params sharded over an fsdp axis), and writes config.json +
model.safetensors (or shards + model.safetensors.index.json) with
`framework.hf_checkpoint.save_hf`, one tensor gathered at a time. The result
loads with transformers' `AutoModelForCausalLM.from_pretrained(out)`
(model_type llama, mistral with a sliding window, qwen2 with q/k/v biases).
Our tied head's 1/sqrt(d_model) logit scale is folded into the final norm.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from absl import app
from absl import flags
import ml_collections
import numpy as np

from framework import checkpoint as checkpoint_lib
from framework import hf_checkpoint
from framework import mesh as mesh_lib
from framework import optim
from framework import train_state as train_state_lib
from models import registry

def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _WORKDIR, _OUT, _STEP, _DTYPE, _MAX_SHARD_BYTES, _MAX_POSITIONS
  _WORKDIR = flags.DEFINE_string("workdir", None, "run directory (config.json, checkpoints/)",
                                 required=True)
  _OUT = flags.DEFINE_string("out", None, "output directory for the HF checkpoint",
                             required=True)
  _STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest that verifies)")
  _DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                             "stored dtype (default: the params')")
  _MAX_SHARD_BYTES = flags.DEFINE_integer("max_shard_bytes", hf_checkpoint.DEFAULT_MAX_SHARD_BYTES,
                                          "split into several files above this size")
  _MAX_POSITIONS = flags.DEFINE_integer("max_position_embeddings", 0,
                                        "config.json's max_position_embeddings "
                                        "(default: the run's data.seq_len)")


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--workdir: {path} not found (not a run directory?)")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_params(workdir: str, step: Optional[int] = None) -> tuple[Any, Any, int]:
  """(model config, params, step) of a run's checkpoint, checksums verified."""
  config = read_run_config(workdir)
  if config.model.get("name") != "transformer":
    raise ValueError(f"{workdir}/config.json: model.name={config.model.get('name')!r}; "
                     "only the transformer LM exports to Hugging Face")
  cfg = registry.make_config(config.model)
  model = registry.build(config.model)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"--workdir: {ckpt_dir} not found: the run saved no checkpoint")
  mesh = mesh_lib.create_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  total = int(config.trainer.total_steps)
  tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, total))
  z = np.zeros((1, 2), np.int32)
  example = {"inputs": z, "targets": z, "weights": z, "segment_ids": z, "positions": z}
  abstract, shardings = train_state_lib.state_shardings(
      model, tx, example, mesh, config.sharding.rules, seed=int(config.seed))
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir, save_every=1, keep=0, async_save=False)
  try:
    if step is None:
      restored = ckpt.restore_latest(abstract, shardings)
      if restored is None:
        raise FileNotFoundError(f"--workdir: no checkpoint step in {ckpt_dir}")
      step, state, _ = restored
    else:
      if step not in ckpt.steps():
        raise FileNotFoundError(f"--step={step}: not in {ckpt_dir} (steps: {ckpt.steps()})")
      state, _ = ckpt.restore(step, abstract, shardings)
  finally:
    ckpt.close()
  return cfg, state.params, int(step)


def export(workdir: str, out: str, step: Optional[int] = None, dtype: Optional[str] = None,
           max_shard_bytes: int = hf_checkpoint.DEFAULT_MAX_SHARD_BYTES,
           max_position_embeddings: int = 0) -> str:
  """Writes the run's checkpoint (newest that verifies, or `step`) to `out`; returns a summary line."""
  cfg, params, step = restore_params(workdir, step)
  seq_len = int(read_run_config(workdir).data.get("seq_len", 4096))
  written = hf_checkpoint.save_hf(
      out, cfg, params, max_shard_bytes=max_shard_bytes, dtype=dtype,
      max_position_embeddings=max_position_embeddings or seq_len)
  size = sum(os.path.getsize(f) for f in written)
  hf = hf_checkpoint.read_hf_config(out)
  return (f"exported step {step} of {workdir} to {out}: model_type "
          f"{hf['model_type']}, {len(written)} file(s), {size / 2**20:.1f} MiB "
          f"({hf['torch_dtype']})")


def main(argv):
  del argv
  print(export(_WORKDIR.value, _OUT.value, _STEP.value, _DTYPE.value, _MAX_SHARD_BYTES.value,
               _MAX_POSITIONS.value))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
