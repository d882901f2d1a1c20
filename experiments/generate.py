"""Continue prompts with a trained LM (KV-cache decoding, framework/decoding.py).

  python -m experiments.generate --workdir=runs/quickstart --prompt="The " \
      --prompt="def " --max_new_tokens=64 --temperature=0.8 --top_k=40 --seed=0
  python -m experiments.generate --hf=/path/to/llama_dir --prompt_ids=1,450,4996

--workdir: the run's config.json gives the model and the vocabulary
(data.vocab / data.vocab_path); the newest checkpoint that verifies is
restored (the whole train state is read, as a resumed run would, and its
parameters kept). --hf: a Hugging Face safetensors checkpoint directory
(framework/hf_checkpoint.py); its tokenizer.json, if present, encodes text
prompts, and config.json's bos/eos ids are the defaults for --bos_id and the
stop tokens. --prompt_ids takes token ids directly (comma separated).

Beginning of sequence: runs trained by this framework's seqio pipeline saw
id 0 before every document (DecoderFeatureConverter shifts targets right
with 0), so --bos_id defaults to 0 for --workdir; -1 prepends nothing.
Temperature 0 (the default) is greedy. Generation stops at the vocabulary's
EOS (unless --nostop_at_eos) or after --max_new_tokens. Errors are one line
on stderr, exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Optional, Sequence

from absl import app, flags

SAMPLE_PROMPTS = ("The ", "To create a ", "def ")   # quickstart report.md samples


class GenerateError(ValueError):
  """Bad input to the entry point (one line)."""


@dataclasses.dataclass
class LoadedLM:
  """A transformer LM ready to generate: module, params, and how to talk to it."""
  module: Any
  params: Any
  vocabulary: Any = None            # seqio-like (encode / decode / eos_id), or None: ids only
  bos_id: Optional[int] = None
  stop_tokens: tuple[int, ...] = ()
  source: str = ""


@dataclasses.dataclass
class Continuation:
  prompt_ids: list[int]
  new_ids: list[int]               # without a final stop token
  text: Optional[str]              # decoded new tokens (None without a vocabulary)
  finish_reason: str               # "stop" | "length"


def _read_run_config(workdir: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise GenerateError(f"--workdir={workdir!r}: no such directory")
  if not os.path.isfile(path):
    raise GenerateError(f"{path} not found: --workdir must be a run directory written by "
                        "experiments.launch")
  try:
    with open(path, encoding="utf-8") as f:
      return ml_collections.ConfigDict(json.load(f))
  except ValueError as err:
    raise GenerateError(f"{path}: not valid JSON ({err})") from None


def _mesh_for(config) -> Any:
  from framework import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  try:
    return mesh_lib.create_mesh(dict(config.mesh.shape))
  except (mesh_lib.MeshError, KeyError, AttributeError):
    return mesh_lib.create_mesh({"data": -1})   # the run's mesh does not fit these devices


def load_run(workdir: str) -> LoadedLM:
  """The newest verified checkpoint of an LM run, with its vocabulary."""
  config = _read_run_config(workdir)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from data_pipelines import lm_data  # pylint: disable=g-import-not-at-top
  from framework import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from framework import optim  # pylint: disable=g-import-not-at-top
  from framework import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from framework import train_state  # pylint: disable=g-import-not-at-top
  from models import registry, transformer  # pylint: disable=g-import-not-at-top

  try:
    model = registry.build(config.model.to_dict())
  except (TypeError, ValueError, KeyError) as err:
    raise GenerateError(f"{workdir}/config.json: model: {err}") from None
  module = getattr(model, "module", None)
  if not isinstance(module, transformer.TransformerLM):
    raise GenerateError(f"{workdir}/config.json: model.name={config.model.get('name')!r} is "
                        "not a transformer LM; generation needs one")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir) or not any(n.isdigit() for n in os.listdir(ckpt_dir)):
    raise GenerateError(f"{ckpt_dir}: no checkpoint to restore (train first, with "
                        "checkpoint.enabled)")
  mesh = _mesh_for(config)
  rules = sharding_lib.normalize_rules(config.sharding.rules)
  total = int(config.trainer.total_steps)
  tx = optim.make_optimizer(config.optimizer, optim.make_schedule(config.schedule, total))
  seq_len = int(config.data.seq_len)
  example = {k: np.zeros((1, seq_len), np.int32)
             for k in ("inputs", "targets", "weights", "segment_ids", "positions")}
  abstract, shardings = train_state.state_shardings(model, tx, example, mesh, rules,
                                                    int(config.seed))
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir, save_every=1, async_save=False)
  try:
    restored = ckpt.restore_latest(abstract, shardings)
  except checkpoint_lib.CheckpointError as err:
    raise GenerateError(str(err)) from None
  finally:
    ckpt.close()
  if restored is None:
    raise GenerateError(f"{ckpt_dir}: no checkpoint to restore")
  step, state, _ = restored
  params = state.params
  del state
  try:
    vocab = lm_data.make_vocabulary(config.data.vocab, config.data.get("vocab_path", ""))
  except (OSError, ValueError) as err:
    raise GenerateError(f"{workdir}/config.json: data.vocab: {err}") from None
  eos = getattr(vocab, "eos_id", None)
  jax.block_until_ready(params)
  return LoadedLM(module, params, vocab, bos_id=0,
                  stop_tokens=(int(eos),) if eos is not None else (),
                  source=f"{workdir} step {step}")


class _TokenizerJson:
  """A tokenizer.json through the `tokenizers` library: encode adds no special tokens."""

  def __init__(self, path: str, eos_id: Optional[int]):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._tok = tokenizers.Tokenizer.from_file(path)
    self.eos_id = eos_id

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode(list(ids), skip_special_tokens=True)


def load_hf(path: str, mesh: Any = None) -> LoadedLM:
  """A Hugging Face Llama-family checkpoint (and its tokenizer.json, if any)."""
  from framework import hf_checkpoint  # pylint: disable=g-import-not-at-top
  from models import transformer  # pylint: disable=g-import-not-at-top
  try:
    cfg, params = hf_checkpoint.load_hf(path, mesh=mesh)
    hf = hf_checkpoint.read_hf_config(path)
  except (OSError, ValueError) as err:
    raise GenerateError(f"--hf={path}: {err}") from None
  eos = hf.get("eos_token_id")
  stops = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
  bos = hf.get("bos_token_id")
  tok_path = os.path.join(path, "tokenizer.json")
  vocab = _TokenizerJson(tok_path, stops[0] if stops else None) if os.path.isfile(tok_path) \
      else None
  return LoadedLM(transformer.TransformerLM(cfg), params, vocab,
                  bos_id=None if bos is None else int(bos), stop_tokens=stops,
                  source=f"hf:{path}")


def generate(lm: LoadedLM, prompts: Sequence[str | Sequence[int]], *,
             bos_id: Optional[int] = None, stop_at_eos: bool = True,
             **kwargs: Any) -> list[Continuation]:
  """Continues text prompts (encoded by lm.vocabulary) or id lists.

  bos_id: None takes lm.bos_id, -1 prepends nothing. kwargs go to
  `framework.decoding.generate` (max_new_tokens, temperature, top_k, top_p,
  seed, cache_size, mesh, ...). Works for `load_run` and `load_hf` models alike.
  """
  from framework import decoding  # pylint: disable=g-import-not-at-top
  bos = lm.bos_id if bos_id is None else (None if bos_id < 0 else int(bos_id))
  rows = []
  for n, p in enumerate(prompts):
    if isinstance(p, str):
      if lm.vocabulary is None:
        raise GenerateError(f"prompt {n} is text but {lm.source} has no tokenizer; pass "
                            "--prompt_ids")
      ids = list(lm.vocabulary.encode(p))
    else:
      ids = [int(i) for i in p]
    rows.append(([] if bos is None else [bos]) + ids)
  stops = tuple(kwargs.pop("stop_tokens", ())) + (lm.stop_tokens if stop_at_eos else ())
  try:
    result = decoding.generate(lm.module, lm.params, rows, stop_tokens=stops, **kwargs)
  except ValueError as err:
    raise GenerateError(str(err)) from None
  out = []
  for b, row in enumerate(rows):
    n = int(result.num_generated[b])
    reason = result.finish_reason[b]
    new = [int(i) for i in result.tokens[b, :n - (1 if reason == "stop" else 0)]]
    text = lm.vocabulary.decode(new) if lm.vocabulary is not None else None
    out.append(Continuation(row, new, text, reason))
  return out


def report_samples(module: Any, params: Any, vocabulary: Any, *, bos_id: Optional[int] = 0,
                   prompts: Sequence[str] = SAMPLE_PROMPTS, max_new_tokens: int = 64) -> str:
  """A markdown "## Samples" section: greedy continuations of fixed prompts."""
  eos = getattr(vocabulary, "eos_id", None)
  lm = LoadedLM(module, params, vocabulary, bos_id=bos_id,
                stop_tokens=(int(eos),) if eos is not None else ())
  outs = generate(lm, list(prompts), max_new_tokens=max_new_tokens)
  lines = ["", "## Samples", "",
           f"Greedy continuations ({max_new_tokens} new tokens at most, KV-cache decoding, "
           f"BOS id {bos_id}) of fixed prompts; `python -m experiments.generate "
           "--workdir=...` makes more.", ""]
  for prompt, c in zip(prompts, outs):
    body = (prompt + (c.text or "")).replace("```", "'''")
    lines += [f"Prompt `{prompt!r}` ({c.finish_reason}):", "", "```text", body, "```", ""]
  return "\n".join(lines)


def _parse_prompt_ids(values: Sequence[str]) -> list[list[int]]:
  out = []
  for v in values:
    try:
      out.append([int(x) for x in v.replace(" ", "").split(",") if x])
    except ValueError:
      raise GenerateError(f"--prompt_ids={v!r}: expected comma-separated integers") from None
  return out


def _define_flags() -> dict[str, Any]:
  """The command line's flags (defined only when run as a program, so that
  importing this module from another absl program defines nothing)."""
  return dict(
      workdir=flags.DEFINE_string("workdir", None, "Run directory (config.json, checkpoints/)."),
      hf=flags.DEFINE_string("hf", None, "Hugging Face checkpoint directory instead of "
                             "--workdir."),
      prompt=flags.DEFINE_multi_string("prompt", [], "A text prompt (repeat for a batch)."),
      prompt_ids=flags.DEFINE_multi_string("prompt_ids", [], "A prompt as comma-separated ids."),
      max_new_tokens=flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate per prompt."),
      temperature=flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 is greedy."),
      top_k=flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: off)."),
      top_p=flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1: off)."),
      seed=flags.DEFINE_integer("seed", 0, "Sampling seed."),
      bos_id=flags.DEFINE_integer("bos_id", None, "Id prepended to every prompt (-1: none); "
                                  "default 0 for --workdir runs, config.json's bos_token_id "
                                  "for --hf."),
      stop_at_eos=flags.DEFINE_bool("stop_at_eos", True, "Stop a row at the EOS id."),
      cache_size=flags.DEFINE_integer("cache_size", None, "KV-cache slots (default: fitted)."),
  )


_FLAGS: dict[str, Any] = {}


def _one_line(err: BaseException) -> str:
  return " ".join(str(err).replace("\\n", " ").split()).strip("'\"")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  v = {k: f.value for k, f in _FLAGS.items()}
  try:
    if bool(v["workdir"]) == bool(v["hf"]):
      raise GenerateError("give exactly one of --workdir (a training run) and --hf "
                          "(a Hugging Face checkpoint directory)")
    prompts: list[Any] = list(v["prompt"]) + _parse_prompt_ids(v["prompt_ids"])
    if not prompts:
      raise GenerateError("no prompts: pass --prompt=TEXT or --prompt_ids=1,2,3 (repeatable)")
    lm = load_run(v["workdir"]) if v["workdir"] else load_hf(v["hf"])
    outs = generate(lm, prompts, bos_id=v["bos_id"], stop_at_eos=v["stop_at_eos"],
                    max_new_tokens=v["max_new_tokens"], temperature=v["temperature"],
                    top_k=v["top_k"], top_p=v["top_p"], seed=v["seed"],
                    cache_size=v["cache_size"])
  except (GenerateError, ValueError, OSError) as err:
    print(f"generate: {_one_line(err)}", file=sys.stderr)
    sys.exit(2)
  print(f"# {lm.source}")
  for n, (prompt, c) in enumerate(zip(prompts, outs)):
    print(f"--- [{n}] {len(c.prompt_ids)} prompt tokens, {len(c.new_ids)} new, "
          f"finish: {c.finish_reason}")
    if c.text is not None and isinstance(prompt, str):
      print(prompt + c.text)
    else:
      print(" ".join(map(str, c.prompt_ids)), "->", " ".join(map(str, c.new_ids)))


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError) as err:
    print(f"generate: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main, flags_parser=_parse_flags)
