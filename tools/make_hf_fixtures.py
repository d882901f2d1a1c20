"""Builds Hugging Face `transformers` reference fixtures for the Llama-family import.

Dev-time only: this tool needs torch and transformers, which the project does
not depend on, and imports nothing of ours. It runs in its own venv:

  python3 -m venv /work/hfvenv
  /work/hfvenv/bin/pip install /opt/wheels/torch-2.13.0+cpu-*.whl   # CPU build
  /work/hfvenv/bin/pip install transformers safetensors numpy
  /work/hfvenv/bin/python tools/make_hf_fixtures.py --out=tests/fixtures/hf

Last run with torch 2.13.0+cpu, transformers 5.24.0, safetensors 0.8.0,
numpy 2.4.6. The output is deterministic for a given torch version (fixed seeds).

For each model NAME it writes tests/fixtures/hf/NAME/ holding what
`save_pretrained(safe_serialization=True)` writes (config.json,
model.safetensors in float32, generation_config.json) and expected.npz:

  prompts               int32 [3, T=20]      token ids in [3, vocab)
  prompt_lengths        int32 [3]            all T
  logits                float32 [3, T, V]    full forward, eager attention, float32
  greedy                int32 [3, 12]        generate(do_sample=False, max_new_tokens=12),
                                             each prompt alone (batch 1, no padding),
                                             eos/pad disabled
  greedy_min_margin     float32 [3]          min over the 12 steps of top1 - top2 logit
  ragged_prompts        int32 [3, T]         ids, padded with 0 after each length
  ragged_prompt_lengths int32 [3]            (20, 13, 7)
  ragged_logits         float32 [3, T, V]    each prompt alone at its length; 0 past it
  ragged_greedy         int32 [3, 12]        as `greedy`, each ragged prompt alone
  ragged_greedy_min_margin float32 [3]
  sliding_window        int32 []             the window W, or 0 for none
  sliding_window_effective bool []           whether W changes these logits

The math is the Llama decoder (pre-norm, x <- x + Attn(RMSNorm(x)),
x <- x + W_down(silu(W_gate h) * W_up h)), RMSNorm(x) = w * x / sqrt(mean(x^2) + eps),
grouped-query attention (kv head j serves query heads j*G .. j*G+G-1, G = H/H_kv),
scores / sqrt(head_dim). HF Linear weights are [out, in] (y = x W^T + b).

RoPE convention (read from transformers/models/llama/modeling_llama.py,
`rotate_half` and `apply_rotary_pos_emb`): the HALVES convention. For a head
vector x of size d, dimension i < d/2 is paired with i + d/2:
  rotate_half(x) = concat(-x[d/2:], x[:d/2]),  x' = x * cos + rotate_half(x) * sin,
with cos/sin = cos/sin(p * concat(f, f)), f_i = theta^(-2i/d) (i < d/2), p the
position (0-based). Not interleaved pairs (2i, 2i+1). `--print_rope` reprints
this from the installed source. Scaled RoPE changes f only: "linear" divides
every f_i by factor; "llama3" divides f_i by factor where the wavelength
2 pi / f_i > L / low_freq_factor, keeps it where < L / high_freq_factor and
interpolates between (L = original_max_position_embeddings).

Mistral's window (transformers/masking_utils.py `sliding_window_overlay`):
query q attends to key k iff q - W < k <= q, i.e. the W most recent tokens,
itself included.

Config layout: transformers 5 writes RoPE settings as
"rope_parameters": {"rope_theta": ..., "rope_type": ..., ...}. Hub checkpoints
made by transformers 4.x instead have top-level "rope_theta" and a
"rope_scaling" dict (or null). The fixtures with scaled RoPE (llama3_scaled,
llama_linear) are rewritten to that 4.x layout (transformers 5 still reads
it; this tool checks the logits are unchanged), the others keep the 5.x layout,
so an importer is tested on both.

Second mode, for our exporter:

  /work/hfvenv/bin/python tools/make_hf_fixtures.py \
      --check_export=DIR --reference=tests/fixtures/hf/llama

loads DIR (config.json + model.safetensors) with AutoModelForCausalLM in
float32 eager, runs the reference's prompts, prints the max abs logit
difference against the reference's expected.npz and exits 1 if it is > 1e-4.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from typing import Any, Callable

import numpy as np
import torch
import transformers

T = 20
N_PROMPTS = 3
NEW_TOKENS = 12
RAGGED_LENGTHS = (20, 13, 7)
FIRST_ID = 3  # ids 0..2 are the conventional pad/bos/eos; prompts avoid them
TOLERANCE = 1e-4

_COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    num_hidden_layers=2,
    head_dim=16,
    intermediate_size=160,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
    initializer_range=0.2,  # recorded only; _randomize draws the weights
    # No special tokens: generate() never stops early and never pads.
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)


def _llama(**kw: Any) -> transformers.PretrainedConfig:
  args = dict(_COMMON, num_attention_heads=4, num_key_value_heads=2,
              rope_theta=10000.0, tie_word_embeddings=False)
  args.update(kw)
  return transformers.LlamaConfig(**args)


def _mistral(sliding_window: int | None = 8) -> transformers.PretrainedConfig:
  return transformers.MistralConfig(
      **_COMMON, num_attention_heads=4, num_key_value_heads=1,
      rope_theta=10000.0, tie_word_embeddings=False,
      sliding_window=sliding_window)


def _qwen2() -> transformers.PretrainedConfig:
  return transformers.Qwen2Config(
      **_COMMON, num_attention_heads=4, num_key_value_heads=2,
      rope_theta=10000.0, tie_word_embeddings=False, use_sliding_window=False)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

# name -> (config factory, seed, layout of config.json: "v5" or "v4")
MODELS: dict[str, tuple[Callable[[], Any], int, str]] = {
    "llama": (_llama, 1, "v5"),
    "llama3_scaled": (lambda: _llama(rope_theta=500000.0,
                                     rope_scaling=dict(LLAMA3_SCALING),
                                     tie_word_embeddings=True), 2, "v4"),
    "mistral": (_mistral, 3, "v5"),
    "qwen2": (_qwen2, 4, "v5"),
    "llama_linear": (lambda: _llama(rope_scaling={"rope_type": "linear",
                                                  "factor": 2.0}), 5, "v4"),
}

WEIGHT_STD = 0.2
NORM_STD = 0.2
BIAS_STD = 0.2


def rope_convention() -> str:
  """States the RoPE pairing transformers' Llama uses, from its source."""
  mod = transformers.models.llama.modeling_llama
  src = inspect.getsource(mod.rotate_half)
  halves = "x.shape[-1] // 2" in src and "torch.cat((-x2, x1)" in src
  name = ("halves: dim i pairs with i + d/2 (rotate_half = concat(-x2, x1))"
          if halves else "NOT the halves convention; read the source below")
  return f"transformers {transformers.__version__} Llama RoPE: {name}\n{src}"


def _randomize(model: torch.nn.Module, seed: int) -> None:
  """Draws every parameter: matrices N(0, 0.2^2), norm scales 1 + N(0, 0.2^2), biases N(0, 0.2^2).

  Large weights keep the top two logits apart, so greedy decoding is not
  decided by rounding; random norm scales and biases make a dropped or
  misplaced tensor visible in the logits.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
      if name.endswith("norm.weight"):
        p.copy_(1.0 + NORM_STD * noise)
      elif name.endswith(".bias"):
        p.copy_(BIAS_STD * noise)
      else:
        p.copy_(WEIGHT_STD * noise)


def _forward(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(ids, dtype=torch.long)[None])
  return out.logits[0].float().numpy()


def _greedy(model: torch.nn.Module, ids: np.ndarray) -> tuple[np.ndarray, float]:
  """generate() greedily; returns the new tokens and the smallest top1 - top2 gap."""
  prompt = torch.as_tensor(ids, dtype=torch.long)[None]
  with torch.no_grad():
    out = model.generate(
        prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
        max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        eos_token_id=None, pad_token_id=0, output_logits=True,
        return_dict_in_generate=True)
  new = out.sequences[0, len(ids):].numpy().astype(np.int32)
  if new.shape != (NEW_TOKENS,):
    raise RuntimeError(f"generate returned {new.shape[0]} tokens, want {NEW_TOKENS}")
  margin = np.inf
  for step in out.logits:
    top2 = torch.topk(step[0].float(), 2).values
    margin = min(margin, float(top2[0] - top2[1]))
  # The cached decode must agree with a full forward over prompt + new tokens.
  full = _forward(model, np.concatenate([ids, new]))
  again = full[len(ids) - 1:-1].argmax(-1)
  if not np.array_equal(again, new):
    raise RuntimeError(f"generate {new} != full-forward argmax {again}")
  return new, margin


def _load(path: str) -> torch.nn.Module:
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager")
  return model.eval()


def _to_v4_layout(config_path: str) -> None:
  """Rewrites rope_parameters as transformers 4.x's rope_theta + rope_scaling."""
  with open(config_path) as f:
    cfg = json.load(f)
  rope = dict(cfg.pop("rope_parameters"))
  cfg["rope_theta"] = rope.pop("rope_theta")
  cfg["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
  with open(config_path, "w") as f:
    json.dump(cfg, f, indent=2, sort_keys=True)
    f.write("\n")


def _expected(model: torch.nn.Module, rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
  prompts = rng.integers(FIRST_ID, vocab, size=(N_PROMPTS, T)).astype(np.int32)
  ragged = rng.integers(FIRST_ID, vocab, size=(N_PROMPTS, T)).astype(np.int32)
  lengths = np.asarray(RAGGED_LENGTHS, np.int32)
  for i, n in enumerate(lengths):
    ragged[i, n:] = 0
  out: dict[str, np.ndarray] = {
      "prompts": prompts,
      "prompt_lengths": np.full((N_PROMPTS,), T, np.int32),
      "ragged_prompts": ragged,
      "ragged_prompt_lengths": lengths,
  }
  logits = np.stack([_forward(model, p) for p in prompts])
  ragged_logits = np.zeros_like(logits)
  for i, n in enumerate(lengths):
    ragged_logits[i, :n] = _forward(model, ragged[i, :n])
  out["logits"] = logits.astype(np.float32)
  out["ragged_logits"] = ragged_logits.astype(np.float32)
  for key, rows, lens in (("greedy", prompts, [T] * N_PROMPTS),
                          ("ragged_greedy", ragged, lengths)):
    results = [_greedy(model, p[:n]) for p, n in zip(rows, lens)]
    out[key] = np.stack([r[0] for r in results]).astype(np.int32)
    out[key + "_min_margin"] = np.asarray([r[1] for r in results], np.float32)
  return out


def _window_effect(name: str, model: torch.nn.Module, prompts: np.ndarray) -> float:
  """Max |logits(W) - logits(no window)| with the same weights."""
  cfg = model.config
  if getattr(cfg, "sliding_window", None) is None:
    return 0.0
  plain = transformers.AutoModelForCausalLM.from_config(
      _mistral(sliding_window=None) if name == "mistral" else cfg,
      dtype=torch.float32, attn_implementation="eager").eval()
  plain.load_state_dict(model.state_dict())
  return float(max(np.abs(_forward(model, p) - _forward(plain, p)).max() for p in prompts))


def _rope_effect(model: torch.nn.Module, prompts: np.ndarray) -> float:
  """Max |logits(scaled RoPE) - logits(plain RoPE, same theta)| with the same weights."""
  cfg = model.config.to_dict()
  rope = dict(cfg.get("rope_parameters") or {})
  if rope.get("rope_type", "default") == "default":
    return 0.0
  cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": rope["rope_theta"]}
  cfg.pop("rope_scaling", None)
  plain = transformers.AutoModelForCausalLM.from_config(
      type(model.config).from_dict(cfg), dtype=torch.float32,
      attn_implementation="eager").eval()
  plain.load_state_dict(model.state_dict())
  return float(max(np.abs(_forward(model, p) - _forward(plain, p)).max() for p in prompts))


def build(name: str, out_dir: str) -> dict[str, Any]:
  factory, seed, layout = MODELS[name]
  config = factory()
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(
      config, dtype=torch.float32, attn_implementation="eager").eval()
  _randomize(model, seed)
  path = os.path.join(out_dir, name)
  os.makedirs(path, exist_ok=True)
  model.save_pretrained(path, safe_serialization=True)
  if layout == "v4":
    _to_v4_layout(os.path.join(path, "config.json"))
  # The reference is computed from what was written, as an importer sees it.
  model = _load(path)
  rng = np.random.default_rng(1000 + seed)
  expected = _expected(model, rng, config.vocab_size)
  if layout == "v4":  # the rewritten config must mean what the original did
    original = transformers.AutoModelForCausalLM.from_config(
        factory(), dtype=torch.float32, attn_implementation="eager").eval()
    original.load_state_dict(model.state_dict())
    gap = np.abs(_forward(original, expected["prompts"][0]) - expected["logits"][0]).max()
    if gap > 1e-6:
      raise RuntimeError(f"{name}: the 4.x config layout changes the logits by {gap}")
  window = getattr(model.config, "sliding_window", None)
  effect = _window_effect(name, model, expected["prompts"])
  expected["sliding_window"] = np.asarray(window or 0, np.int32)
  expected["sliding_window_effective"] = np.asarray(effect > 1e-4)
  np.savez_compressed(os.path.join(path, "expected.npz"), **expected)
  size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
  return dict(name=name, bytes=size, window=window, window_effect=effect,
              rope_effect=_rope_effect(model, expected["prompts"]),
              margin=float(expected["greedy_min_margin"].min()),
              ragged_margin=float(expected["ragged_greedy_min_margin"].min()))


def check_export(export_dir: str, reference: str) -> int:
  """Runs an exported checkpoint on the reference prompts; 0 if it matches."""
  for f in ("config.json", "model.safetensors"):
    if not os.path.isfile(os.path.join(export_dir, f)):
      print(f"check_export: {export_dir} has no {f}", file=sys.stderr)
      return 1
  exp_path = os.path.join(reference, "expected.npz")
  if not os.path.isfile(exp_path):
    print(f"check_export: reference {reference} has no expected.npz", file=sys.stderr)
    return 1
  expected = np.load(exp_path)
  model = _load(export_dir)
  worst = 0.0
  for i, p in enumerate(expected["prompts"]):
    n = int(expected["prompt_lengths"][i])
    worst = max(worst, float(np.abs(_forward(model, p[:n]) - expected["logits"][i, :n]).max()))
  print(f"prompts: max |logits - reference| = {worst:.3g}")
  if "ragged_prompts" in expected:
    ragged_worst = 0.0
    for i, p in enumerate(expected["ragged_prompts"]):
      n = int(expected["ragged_prompt_lengths"][i])
      diff = np.abs(_forward(model, p[:n]) - expected["ragged_logits"][i, :n]).max()
      ragged_worst = max(ragged_worst, float(diff))
    print(f"ragged prompts: max |logits - reference| = {ragged_worst:.3g}")
    worst = max(worst, ragged_worst)
  ok = worst <= TOLERANCE
  print(f"{'OK' if ok else 'MISMATCH'}: {export_dir} vs {reference} "
        f"(max abs diff {worst:.3g}, tolerance {TOLERANCE:g})")
  return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="tests/fixtures/hf", help="fixture root")
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated subset of {','.join(MODELS)}")
  parser.add_argument("--check_export", default=None,
                      help="exported checkpoint directory to check")
  parser.add_argument("--reference", default=None,
                      help="fixture directory (with expected.npz) for --check_export")
  parser.add_argument("--print_rope", action="store_true",
                      help="print the RoPE convention read from transformers and exit")
  args = parser.parse_args(argv)
  torch.set_num_threads(1)
  if args.print_rope:
    print(rope_convention())
    return 0
  if args.check_export:
    if not args.reference:
      parser.error("--check_export needs --reference=tests/fixtures/hf/NAME")
    return check_export(args.check_export, args.reference)
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")
  print(rope_convention().splitlines()[0])
  for name in args.models.split(","):
    if name not in MODELS:
      parser.error(f"--models: unknown model {name!r}; known: {','.join(MODELS)}")
    r = build(name, args.out)
    print(f"{name}: {r['bytes']} bytes, greedy min margin {r['margin']:.4g} "
          f"(ragged {r['ragged_margin']:.4g}), sliding_window={r['window']} "
          f"changes logits by {r['window_effect']:.3g}, RoPE scaling by "
          f"{r['rope_effect']:.3g}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
