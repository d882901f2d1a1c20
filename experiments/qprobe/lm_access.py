"""The LM as the inference-time studies see it: a frozen model, its vocabulary,
sampled completions, their log-likelihoods and their embeddings.

An `LMHandle` comes either from a run of the LM runner (`experiments.lm`): the
newest checkpoint of `<workdir>/checkpoints`, restored into the train state's
layout and gathered to the host; or from a Hugging Face checkpoint directory
(`framework.hf_checkpoint.load_hf`) with its `tokenizer.json` (or, without
one, the vocabulary the study's config names).

Embeddings. For a token sequence s = (bos, x_1..x_P, y_1..y_C) the hidden
states h^(l)_t of layer l (the output of decoder block l, or with l = -1 the
final RMSNorm's output that the LM head reads) give
  last-token:   phi(x, y) = h^(l)_T                (T = the last position)
  mean-pooled:  phi(x, y) = (1/C) sum_{t in y} h^(l)_t
taken with flax's `capture_intermediates` (the model is not modified). The
same forward pass gives log p(y | x) = sum_{t in y} log softmax(z_{t-1})[s_t],
the model's own likelihood used by best-of-k.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from framework import decoding

POOLINGS = ("last", "mean")


@dataclasses.dataclass
class LMHandle:
  """A frozen LM: `module` (TransformerLM), host `params`, a seqio-like
  `vocabulary` (encode, decode, eos_id), the id every prompt starts with
  (`bos_id`; 0 for models trained here, see framework/decoding.py) and the
  stop id (`eos_id`)."""
  module: nn.Module
  params: Any
  vocabulary: Any
  bos_id: int
  eos_id: int
  source: str = ""

  @property
  def cfg(self):
    return self.module.cfg

  def encode(self, text: str) -> list[int]:
    return [int(i) for i in self.vocabulary.encode(text)]

  def decode(self, ids: Sequence[int]) -> str:
    return self.vocabulary.decode([int(i) for i in ids])


# ------------------------------------------------------------------ loading

def _example_batch(config: Any) -> dict[str, np.ndarray]:
  shape = (int(config.data.global_batch_size), int(config.data.seq_len))
  return {k: np.zeros(shape, np.int32)
          for k in ("inputs", "targets", "weights", "segment_ids", "positions")}


def checkpoint_steps(workdir: str) -> list[int]:
  """The checkpointed steps of an `experiments.lm` run, oldest first."""
  from framework import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  ckpt = checkpoint_lib.Checkpointer(directory, save_every=1, async_save=False)
  try:
    return list(ckpt.steps())
  finally:
    ckpt.close()


def load_run(config: Any, workdir: str, step: Optional[int] = None) -> LMHandle:
  """A verified checkpoint of an `experiments.lm` run in `workdir` (trained
  with LM config `config`): the newest, or `step`; params gathered to the host."""
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from framework import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from framework import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from framework import optim  # pylint: disable=g-import-not-at-top
  from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from framework import train_state as train_state_lib  # pylint: disable=g-import-not-at-top
  from models import registry  # pylint: disable=g-import-not-at-top

  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoints in {directory!r}: train the LM first "
                            "(checkpoint.enabled must be True)")
  model = registry.build(config.model)
  schedule = optim.make_schedule(config.schedule, int(config.trainer.total_steps))
  tx = optim.make_optimizer(config.optimizer, schedule)
  mesh = mesh_lib.create_mesh(dict(config.mesh.shape))
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  abstract, shardings = train_state_lib.state_shardings(
      model, tx, _example_batch(config), mesh, rules, seed=int(config.seed))
  ckpt = checkpoint_lib.Checkpointer(directory, save_every=1, keep=int(config.checkpoint.keep),
                                     async_save=False)
  try:
    if step is None:
      restored = ckpt.restore_latest(abstract, shardings)
    else:
      if int(step) not in ckpt.steps():
        raise FileNotFoundError(f"no checkpoint of step {step} in {directory!r} (steps: "
                                f"{ckpt.steps()})")
      restored = (int(step),) + tuple(ckpt.restore(int(step), abstract, shardings))
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint step in {directory!r}")
  step, state, _ = restored
  params = jax.device_get(state.params)
  vocab = lm_data.make_vocabulary(config.data.vocab, config.data.get("vocab_path", ""))
  return LMHandle(model.module, params, vocab, bos_id=0, eos_id=int(vocab.eos_id),
                  source=f"{directory} step {step}")


def load_hf_dir(path: str, vocab: str = "byte", vocab_path: str = "") -> LMHandle:
  """A Hugging Face Llama-family checkpoint directory. Its `tokenizer.json`
  (if present) is the vocabulary, with the tokenizer's BOS (if it has one)
  starting every prompt; otherwise `vocab`/`vocab_path` as in `data.vocab`
  and BOS 0 (a model of ours exported with `save_hf`)."""
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
  from models import transformer  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(path):
    raise FileNotFoundError(f"hf_dir={path!r}: not a directory")
  cfg, params = hf_checkpoint.load_hf(path)
  tok = os.path.join(path, "tokenizer.json")
  bos = 0
  if os.path.isfile(tok):
    vocabulary = lm_data.make_vocabulary("hf_tokenizer", tok)
    hf = hf_checkpoint.read_hf_config(path)
    if hf.get("bos_token_id") is not None:
      bos = int(hf["bos_token_id"])
  else:
    vocabulary = lm_data.make_vocabulary(vocab, vocab_path)
  return LMHandle(transformer.TransformerLM(cfg), jax.device_get(params), vocabulary,
                  bos_id=bos, eos_id=int(vocabulary.eos_id), source=f"hf:{path}")


# ------------------------------------------------------------------ sampling

def sample_completions(lm: LMHandle, prompts: Sequence[str], *, k: int, max_new_tokens: int,
                       temperature: float, top_k: int = 0, top_p: float = 1.0,
                       seed: int = 0, batch_size: int = 256,
                       extra_stops: Sequence[int] = ()) -> list[list[list[int]]]:
  """k completions per prompt (token ids, the stop token kept when emitted),
  sampled in batches of `batch_size` rows; generation stops at EOS and at
  `extra_stops`. Row i*k + j is prompt i, sample j."""
  encoded = [[lm.bos_id] + lm.encode(p) for p in prompts]
  rows = [e for e in encoded for _ in range(k)]
  out: list[list[int]] = []
  for b, start in enumerate(range(0, len(rows), batch_size)):
    chunk = rows[start:start + batch_size]
    pad = batch_size - len(chunk) if len(rows) > batch_size else 0
    res = decoding.generate(lm.module, lm.params, chunk + [chunk[0]] * pad,
                            max_new_tokens=max_new_tokens, temperature=temperature,
                            top_k=top_k, top_p=top_p,
                            stop_tokens=(lm.eos_id,) + tuple(int(t) for t in extra_stops),
                            seed=seed * 100_003 + b)
    for row in range(len(chunk)):
      out.append([int(t) for t in res.tokens[row, :int(res.num_generated[row])]])
  return [out[i * k:(i + 1) * k] for i in range(len(prompts))]


def strip_stop(lm: LMHandle, completion: Sequence[int], extra_stops: Sequence[int] = ()
               ) -> list[int]:
  """The completion without its final stop token (EOS or one of `extra_stops`)."""
  ids = list(completion)
  if ids and (ids[-1] == lm.eos_id or ids[-1] in set(int(t) for t in extra_stops)):
    ids = ids[:-1]
  return ids


def completion_text(lm: LMHandle, completion: Sequence[int],
                    extra_stops: Sequence[int] = ()) -> str:
  """The text of a completion, without its stop token."""
  return lm.decode(strip_stop(lm, completion, extra_stops))


# ------------------------------------------------------------------ embeddings

def layer_name(cfg: Any, layer: int) -> str:
  """The module whose output is layer `layer`: block i (0 <= i < L) or, for -1,
  the final norm."""
  if layer == -1:
    return "final_norm"
  if not 0 <= layer < cfg.num_layers:
    raise ValueError(f"layer={layer} must be -1 (final norm) or in [0, {cfg.num_layers})")
  return f"layer_{layer}"


@functools.lru_cache(maxsize=32)
def _features_fn(module: nn.Module, name: str):
  def wanted(mdl: nn.Module, method: str) -> bool:
    return method == "__call__" and mdl.name == name and mdl.scope is not None and \
        len(mdl.scope.path) == 1

  def run(params, tokens, first, last):
    logits, state = module.apply({"params": params}, tokens, capture_intermediates=wanted,
                                 mutable=["intermediates"])
    hidden = state["intermediates"][name]["__call__"][0].astype(jnp.float32)   # [B, T, D]
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    token_logp = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]   # [B, T-1]
    t = jnp.arange(tokens.shape[1])[None, :]
    in_completion = (t >= first[:, None]) & (t <= last[:, None])                # [B, T]
    count = jnp.maximum(in_completion.sum(axis=1), 1).astype(jnp.float32)
    mean = (hidden * in_completion[..., None]).sum(axis=1) / count[:, None]
    last_h = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    loglik = (token_logp * in_completion[:, 1:]).sum(axis=1)
    return last_h, mean, loglik
  return jax.jit(run)


def features(lm: LMHandle, prompts: Sequence[Sequence[int]],
             completions: Sequence[Sequence[int]], *, layer: int = -1,
             batch_size: int = 256) -> dict[str, np.ndarray]:
  """For each (prompt ids, completion ids) pair, with the sequence
  bos + prompt + completion: "last" and "mean" embeddings [N, D] (see the
  module docstring) and "loglik" [N] = log p(completion | bos + prompt).
  An empty completion gets the prompt's last hidden state for both poolings
  and log-likelihood 0."""
  if len(prompts) != len(completions):
    raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
  name = layer_name(lm.cfg, layer)
  fn = _features_fn(lm.module, name)
  seqs = [[lm.bos_id] + list(p) + list(c) for p, c in zip(prompts, completions)]
  firsts = [1 + len(p) if len(c) else len(p) for p, c in zip(prompts, completions)]
  out = {k: [] for k in ("last", "mean", "loglik")}
  for start in range(0, len(seqs), batch_size):
    chunk = range(start, min(start + batch_size, len(seqs)))
    width = decoding.bucket_length(max(len(seqs[i]) for i in chunk))
    rows = batch_size if len(seqs) > batch_size else len(chunk)
    tokens = np.zeros((rows, width), np.int32)
    first = np.zeros((rows,), np.int32)
    last = np.zeros((rows,), np.int32)
    for r, i in enumerate(chunk):
      tokens[r, :len(seqs[i])] = seqs[i]
      first[r], last[r] = firsts[i], len(seqs[i]) - 1
    last_h, mean, loglik = jax.device_get(fn(lm.params, tokens, first, last))
    n = len(chunk)
    out["last"].append(np.asarray(last_h[:n]))
    out["mean"].append(np.asarray(mean[:n]))
    ll = np.asarray(loglik[:n], np.float64)
    ll[[len(completions[i]) == 0 for i in chunk]] = 0.0
    out["loglik"].append(ll)
  return {k: np.concatenate(v) for k, v in out.items()}
