"""Runner: train the transformer LM on a seqio task (the quickstart's job).

Wires data_pipelines (seqio task, packing, deterministic batches), models
(TransformerLM) and framework (mesh, sharded state, train loop, checkpoints),
then writes a loss plot and `report.md` into the run directory.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from data_pipelines import batching, lm_sources
from experiments.configs import lm_quickstart
from framework import config as config_lib
from framework import files
from framework import hf_checkpoint
from framework import mesh as mesh_lib
from framework import metrics as metrics_lib
from framework import trainer
from models import registry
from models import transformer


def default_config() -> ml_collections.ConfigDict:
  """The schema of LM configs: the quickstart's keys."""
  return lm_quickstart.get_config()


def validate(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Fails fast, naming the field, before any data is read or anything compiles."""
  config_lib.check_keys(config, default_config())
  trainer.check_config(config)
  sizes = mesh_lib.resolve_mesh_shape(dict(config.mesh.shape), jax.device_count())
  req = config_lib.require
  try:
    registry.make_config(config.model)
  except (TypeError, ValueError) as err:
    raise config_lib.ConfigError(str(err)) from None
  req(config.data.seq_len > 1, "data.seq_len", "must be > 1")
  req(not config.init_from or str(config.init_from).startswith("hf:"), "init_from",
      f"{config.init_from!r} must be '' or 'hf:/path/to/checkpoint_dir'")
  batch_shards = sizes["data"] * sizes["fsdp"]
  gbs = int(config.data.global_batch_size)
  req(gbs % batch_shards == 0, "data.global_batch_size",
      f"{gbs} is not divisible by the data x fsdp mesh size {batch_shards}")
  mb = int(config.trainer.num_microbatches)
  req(mb >= 1 and gbs % mb == 0, "trainer.num_microbatches",
      f"{mb} must divide the global batch size {gbs}")
  req((gbs // mb) % batch_shards == 0, "trainer.num_microbatches",
      f"each micro-batch ({gbs // mb}) must still split over {batch_shards} batch shards")
  source = config.data.source
  req(source in lm_sources.SOURCES, "data.source",
      f"{source!r} must be one of {', '.join(repr(s) for s in lm_sources.SOURCES)}")
  if source == "files":
    for field in ("train_path", "validation_path"):
      path = config.data[field]
      req(bool(path) and os.path.exists(path), f"data.{field}", f"file not found: {path!r}")
  elif source == "curated":
    try:
      lm_sources.curated_shards(config.data.curated_dir)   # the message names the field
    except FileNotFoundError as err:
      raise config_lib.ConfigError(str(err)) from None
    fraction = float(config.data.curated_validation_fraction)
    req(0.0 < fraction < 1.0, "data.curated_validation_fraction",
        f"{fraction} must be in (0, 1): the held-out share of the curated documents")
  req(config.data.vocab in ("byte", "sentencepiece", "hf_tokenizer"), "data.vocab",
      f"{config.data.vocab!r} must be 'byte', 'sentencepiece' or 'hf_tokenizer'")
  if config.data.vocab != "byte":
    req(bool(config.data.vocab_path) and os.path.exists(config.data.vocab_path),
        "data.vocab_path", f"file not found: {config.data.vocab_path!r}")
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  try:
    vocab_size = lm_data.make_vocabulary(config.data.vocab, config.data.vocab_path).vocab_size
  except (OSError, ValueError, RuntimeError) as err:
    msg = str(err) if "config.data.vocab_path" in str(err) else f"config.data.vocab_path: {err}"
    raise config_lib.ConfigError(msg) from None
  req(int(config.model.get("vocab_size", vocab_size)) >= vocab_size, "model.vocab_size",
      f"{config.model.get('vocab_size')} is smaller than the {config.data.vocab} "
      f"vocabulary's {vocab_size} ids")
  return sizes


def model_config(config: ml_collections.ConfigDict) -> transformer.TransformerConfig:
  """The model's config dataclass (`config.model` splatted into it)."""
  return registry.make_config(config.model)


def eval_batches_fn(arrays: dict[str, np.ndarray], global_batch: int, num_batches: int):
  """The first `num_batches` validation batches, in order, this host's rows."""
  n = jax.process_count()
  per_host = global_batch // n
  total = min(num_batches, len(next(iter(arrays.values()))) // global_batch)

  def batches():
    for b in range(total):
      start = b * global_batch + jax.process_index() * per_host
      yield {k: v[start:start + per_host] for k, v in arrays.items()}
  return batches


def plot_losses(workdir: str, unigram: float | None) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
  evals = [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]
  fig, ax = plt.subplots(figsize=(6, 4))
  if train:
    ax.plot(*zip(*train), label="train loss")
  if evals:
    ax.plot(*zip(*evals), "o-", label="eval loss")
  if unigram is not None:
    ax.axhline(unigram, color="gray", ls="--", label=f"unigram entropy {unigram:.2f}")
  ax.set_xlabel("step")
  ax.set_ylabel("nats / token")
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "loss.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


# config.model fields that stay ours under init_from: numerics and the registry name.
INIT_FROM_KEEPS = ("name", "dtype", "param_dtype", "remat")


def _has_checkpoint(workdir: str) -> bool:
  ckpt = os.path.join(workdir, "checkpoints")
  return os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))


def resolve_init_from(config: ml_collections.ConfigDict,
                      workdir: str) -> ml_collections.ConfigDict:
  """`config` with `config.model` defined by `config.init_from` ("hf:DIR"), checked.

  The checkpoint's config.json defines the model: every TransformerConfig
  field comes from it, except dtype, param_dtype and remat, which stay
  config.model's. A config.model field set to anything other than its default
  (the quickstart's value, else the dataclass's) that disagrees with
  config.json is a ConfigError naming it; fields left at their defaults are
  replaced. The checkpoint's tensor names and shapes are checked here, before
  any data is read. A run that resumes from its own checkpoint never reads the
  weights (the checkpoint wins); if DIR is gone by then, the model recorded
  in workdir/config.json is used.
  """
  source = str(config.get("init_from") or "")
  if not source:
    return config
  req = config_lib.require
  req(source.startswith("hf:") and len(source) > 3, "init_from",
      f"{source!r} must be 'hf:/path/to/checkpoint_dir' (a Hugging Face safetensors checkpoint)")
  req(config.model.get("name") == "transformer", "init_from",
      f"needs model.name='transformer', not {config.model.get('name')!r}")
  path = source[3:]
  try:
    hf_cfg = hf_checkpoint.check_hf(path)
  except FileNotFoundError as err:
    saved = os.path.join(workdir, "config.json")
    if not (_has_checkpoint(workdir) and os.path.isfile(saved)):
      raise config_lib.ConfigError(f"config.init_from: {err}") from None
    logging.warning("config.init_from: %s; resuming from the run's own checkpoint with the "
                    "model recorded in %s", err, saved)
    with open(saved, encoding="utf-8") as f:
      merged = dict(json.load(f)["model"])
    merged.update({k: config.model[k] for k in INIT_FROM_KEEPS if k in config.model})
  except ValueError as err:
    raise config_lib.ConfigError(f"config.init_from: {err}") from None
  else:
    defaults = default_config().model
    conflicts = []
    merged = dict(config.model)
    for field in dataclasses.fields(transformer.TransformerConfig):
      if field.name in INIT_FROM_KEEPS:
        continue
      theirs = getattr(hf_cfg, field.name)
      if field.name in config.model:
        ours = config.model[field.name]
        if ours != defaults.get(field.name, field.default) and ours != theirs:
          conflicts.append(f"config.model.{field.name}={ours!r} (config.json: {theirs!r})")
      merged[field.name] = theirs
    if conflicts:
      raise config_lib.ConfigError(
          f"config.init_from: {path}/config.json defines the model, and these config.model "
          f"fields disagree with it: {'; '.join(conflicts)} (leave them unset)")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model = ml_collections.ConfigDict(merged)
  return config


def hf_init_state(path: str) -> Callable[[Any], Any]:
  """`trainer.train`'s init_state: a fresh state's params replaced by the checkpoint's,
  read straight into the same shardings. The random params are freed first, so
  the model is never twice in device memory. The optimizer state is kept: it
  is the initial one for the same shapes (zeros for Adam's moments)."""
  def init_state(state):
    shardings = jax.tree.map(lambda x: x.sharding, state.params)
    dtype = jax.tree.leaves(state.params)[0].dtype
    jax.tree.map(lambda x: x.delete(), state.params)
    _, params = hf_checkpoint.load_hf(path, shardings=shardings, dtype=dtype)
    logging.info("init_from: params loaded from %s", path)
    return state.replace(params=params)
  return init_state


def report_samples(config: ml_collections.ConfigDict, model: Any, params: Any) -> str:
  """report.md's "## Samples": greedy continuations of fixed prompts (every process
  runs the generation; a failure is reported in the section, not raised)."""
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from experiments import generate  # pylint: disable=g-import-not-at-top
  if not isinstance(getattr(model, "module", None), transformer.TransformerLM):
    return ""   # decoding supports the plain transformer LM only
  try:
    vocab = lm_data.make_vocabulary(config.data.vocab, config.data.vocab_path)
    return generate.report_samples(model.module, params, vocab)
  except Exception as err:  # pylint: disable=broad-except
    logging.warning("report samples failed: %s", err)
    return f"\n## Samples\n\nGeneration failed: {type(err).__name__}: {err}\n"


def run(config: ml_collections.ConfigDict, workdir: str, **train_kwargs: Any) -> dict[str, Any]:
  config = resolve_init_from(config, workdir)
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  files.write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))

  arrays = lm_sources.arrays_from_config(config.data)
  gbs = int(config.data.global_batch_size)
  # The trainer sees host-local batches: global batch / process count rows.
  train_iter = batching.BatchIterator(
      arrays["train"], gbs, seed=int(config.seed),
      shard_index=jax.process_index(), num_shards=jax.process_count())
  if int(config.data.eval_batches) > 0 and len(arrays["validation"]["targets"]) < gbs:
    logging.warning("the validation split packs into %d sequences, fewer than one global "
                    "batch of %d: no evaluation", len(arrays["validation"]["targets"]), gbs)
  mcfg = model_config(config)
  model = registry.build(config.model)
  if config.init_from:  # used by a fresh run only: a resumed one restores its checkpoint
    if "init_state" in train_kwargs:
      raise ValueError("config.init_from and an init_state argument both set the initial params")
    train_kwargs["init_state"] = hf_init_state(config.init_from[len("hf:"):])
  result = trainer.train(
      config, model, train_iter, workdir=workdir,
      eval_batches=eval_batches_fn(arrays["validation"], gbs, int(config.data.eval_batches)),
      flops_per_token=transformer.flops_per_token(mcfg, int(config.data.seq_len)),
      **train_kwargs)

  summary: dict[str, Any] = {
      "final_step": result.final_step,
      "preempted": result.preempted,
      "resumed_from": result.resumed_from,
      "params": transformer.count_params(mcfg)["total"],
      "train_loss": result.metrics.get("loss"),
      "eval_loss": result.eval_metrics.get("loss"),
      "eval_accuracy": result.eval_metrics.get("accuracy"),
      "train_tokens": int(arrays["train"]["weights"].sum()),   # non-padding targets, one epoch
      "train_sequences": len(arrays["train"]["targets"]),
  }
  samples = "" if result.preempted else report_samples(config, model, result.state.params)
  if jax.process_index() == 0:
    # Reference line: the training text's unigram entropy in the model's units.
    reference = lm_sources.unigram_entropy(config.data)
    unigram, unit = reference if reference is not None else (None, "token")
    if unigram is not None:
      summary["unigram_entropy"] = unigram
    plot_losses(workdir, unigram)
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    perf = [r for r in records if "perf/tokens_per_s" in r]
    if perf:
      summary["tokens_per_s"] = perf[-1]["perf/tokens_per_s"]
      summary["mfu"] = perf[-1].get("perf/mfu")
    with files.atomic_open(os.path.join(workdir, "report.md")) as f:
      f.write("# LM quickstart report\n\n")
      f.write(f"Data: source `{config.data.source}`, vocabulary `{config.data.vocab}`.\n\n")
      f.write("| figure | value |\n|---|---|\n")
      for k, v in summary.items():
        f.write(f"| {k} | {v if not isinstance(v, float) else f'{v:.4g}'} |\n")
      if unigram is None:
        f.write("\nNo unigram reference: the training split holds no text. "
                "Loss curve: loss.png.\n")
      elif summary.get("eval_loss") is not None:
        f.write(f"\nEval loss {summary['eval_loss']:.3f} nats/{unit} vs the corpus' {unit} "
                f"unigram entropy {unigram:.3f}: the model learned "
                f"{'beyond' if summary['eval_loss'] < unigram else 'less than'} unigram "
                "statistics. Loss curve: loss.png.\n")
      f.write(samples)
    # Process 0 only: the others lack the figures above.
    files.write_text(os.path.join(workdir, "summary.json"), json.dumps(summary, indent=2))
  logging.info("summary: %s", summary)
  return summary
