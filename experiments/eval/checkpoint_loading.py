"""An LM to evaluate: a run directory of ours or a Hugging Face checkpoint.

  <workdir>   a run of `experiments.lm` (config.json + checkpoints/): the model
              from the run's config, parameters from its newest checkpoint
              that verifies (framework.checkpoint), the run's vocabulary;
              beginning of sequence = id 0, the id seqio's decoder feature
              converter shifts in before every document in training.
  hf:<dir>    a Llama-family safetensors checkpoint (framework.hf_checkpoint)
              with its tokenizer.json (encoded without special tokens) and
              config.json's bos_token_id.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from framework import config as config_lib
from framework import mesh as mesh_lib



@dataclasses.dataclass
class LoadedLM:
  module: nn.Module
  params: Any
  encode: Callable[[str], list[int]]
  bos_id: Optional[int]
  description: str
  step: Optional[int] = None


def _byte_encoder(vocab) -> Callable[[str], list[int]]:
  return lambda text: [int(i) for i in vocab.encode(text)]


def load_run(workdir: str, mesh=None, rules: Any = None) -> LoadedLM:
  """The newest verified checkpoint of an `experiments.lm` run directory."""
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from framework import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from framework import optim  # pylint: disable=g-import-not-at-top
  from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from framework import train_state  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(
        f"config.checkpoint={workdir!r}: no config.json there (expected the --workdir of an "
        "experiments.lm run, or hf:<dir> for a Hugging Face checkpoint)")
  with open(path, encoding="utf-8") as f:
    run_config = ml_collections.ConfigDict(json.load(f))
  model = registry.build(run_config.model)
  if mesh is None:
    mesh = mesh_lib.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  rules = run_config.sharding.rules if rules is None else rules
  tx = optim.make_optimizer(run_config.optimizer, optim.make_schedule(
      run_config.schedule, int(run_config.trainer.total_steps)))
  shards = int(np.prod([mesh.shape[a] for a in sharding_lib.BATCH_AXES]))
  zeros = np.zeros((shards, 2), np.int32)
  example = {k: zeros for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  abstract, shardings = train_state.state_shardings(model, tx, example, mesh, rules,
                                                    seed=int(run_config.seed))
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1,
                                     keep=0, async_save=False)
  try:
    restored = ckpt.restore_latest(abstract, shardings)
  finally:
    ckpt.close()
  if restored is None:
    raise config_lib.ConfigError(f"config.checkpoint={workdir!r}: the run has no checkpoint "
                                 f"under {os.path.join(workdir, 'checkpoints')}")
  step, state, _ = restored
  vocab = lm_data.make_vocabulary(run_config.data.vocab, run_config.data.get("vocab_path", ""))
  return LoadedLM(module=model.module, params=state.params, encode=_byte_encoder(vocab),
                  bos_id=0, description=f"{os.path.abspath(workdir)} step {step}", step=step)


def load_hf_dir(directory: str, mesh=None, rules: Any = None) -> LoadedLM:
  """A Llama-family Hugging Face checkpoint directory with its tokenizer.json."""
  from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
  from models import transformer  # pylint: disable=g-import-not-at-top
  tok_path = os.path.join(directory, "tokenizer.json")
  if not os.path.isfile(tok_path):
    raise config_lib.ConfigError(f"config.checkpoint=hf:{directory}: no tokenizer.json there")
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer.from_file(tok_path)
  cfg, params = hf_checkpoint.load_hf(directory, mesh=mesh, rules=rules)
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    bos = json.load(f).get("bos_token_id")
  if isinstance(bos, list):
    bos = bos[0] if bos else None
  encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False).ids)
  return LoadedLM(module=transformer.TransformerLM(cfg), params=params, encode=encode,
                  bos_id=None if bos is None else int(bos), description=f"hf:{directory}")


def load(spec: str, mesh=None, rules: Any = None) -> LoadedLM:
  """`<run workdir>` or `hf:<dir>` (module docstring)."""
  if not spec:
    raise config_lib.ConfigError("config.checkpoint is empty: give a run's --workdir or hf:<dir>")
  if spec.startswith("hf:"):
    directory = os.path.expanduser(spec[3:])
    if not os.path.isdir(directory):
      raise config_lib.ConfigError(f"config.checkpoint={spec!r}: directory not found")
    return load_hf_dir(directory, mesh, rules)
  directory = os.path.expanduser(spec)
  if not os.path.isdir(directory):
    raise config_lib.ConfigError(f"config.checkpoint={spec!r}: directory not found")
  return load_run(directory, mesh, rules)
