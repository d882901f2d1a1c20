"""report.md and plots of the MatFormer study from its results.json dict."""
from __future__ import annotations

import os
from typing import Any

from framework import files


def plot_mixnmatch(workdir: str, results: dict[str, Any]) -> str:
  """Eval loss vs non-embedding parameters: uniform sub-models (line),
  Mix'n'Match choices (points), independently trained baselines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  uni = results["uniform"]
  ax.plot([r["non_embedding"] for r in uni], [r["loss"] for r in uni], "o-", color="C0",
          label="MatFormer, uniform granularity")
  mix = results["mixnmatch"]
  if mix:
    ax.scatter([r["non_embedding"] for r in mix], [r["loss"] for r in mix], s=18, color="C1",
               label="Mix'n'Match (per-layer widths)", zorder=3)
  base = [r for r in uni if "baseline_loss" in r]
  if base:
    ax.plot([r["non_embedding"] for r in base], [r["baseline_loss"] for r in base], "s--",
            color="C2", label="independently trained, same tokens")
  ax.set_xlabel("non-embedding parameters")
  ax.set_ylabel("eval loss (nats / byte)")
  ax.set_title("MatFormer: loss vs size")
  ax.legend()
  fig.tight_layout()
  path = os.path.join(workdir, "mixnmatch.png")
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def _fmt(x: Any, digits: int = 4) -> str:
  return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def findings(results: dict[str, Any]) -> list[str]:
  """One line per question of the study, read off the numbers."""
  out = ["## Summary", ""]
  uni = [r for r in results["uniform"] if "baseline_loss" in r]
  if uni:
    diffs = [r["loss"] - r["baseline_loss"] for r in uni]
    better = sum(d <= 0 for d in diffs)
    out.append(f"- Nested vs independent: {better} of {len(uni)} sub-models match or beat the "
               f"independently trained LM of their size (loss difference "
               f"{min(diffs):+.3f} .. {max(diffs):+.3f} nats).")
  mix = results["mixnmatch"]
  if mix:
    below = sum(r["gap_to_uniform_line"] <= 0 for r in mix)
    best = min(mix, key=lambda r: r["gap_to_uniform_line"])
    out.append(f"- Mix'n'Match: {below} of {len(mix)} choices on or below the uniform line; "
               f"closest {best['widths']} ({best['gap_to_uniform_line']:+.4f} nats).")
  cons = [r for r in results["consistency"] if "baseline" in r]
  if cons:
    wins = sum(r["matformer"]["kl"] < r["baseline"]["kl"] for r in cons)
    out.append(f"- Consistency: {wins} of {len(cons)} sub-models have a lower KL to their "
               "universal model than the independent LM of that size has to the largest one.")
  spec = results["speculative"]
  pairs = {}
  for r in spec:
    pairs.setdefault((r["gamma"], r["temperature"]), {})[r["draft"].split("_")[0]] = r
  both = [p for p in pairs.values() if len(p) == 2]
  if both:
    wins = sum(p["matformer"]["acceptance"] > p["baseline"]["acceptance"] for p in both)
    best = max(r["speedup"] for r in spec)
    why = (" (below 1: at this size each call's fixed cost dominates, and the draft "
           "shares the target's attention, embedding and output layer)" if best < 1 else "")
    out.append(f"- Speculative decoding: the sub-model draft has the higher acceptance rate in "
               f"{wins} of {len(both)} settings; best wall-clock speed-up {best:.2f}x{why}.")
  bench = results.get("benchmark")
  if bench:
    out.append(f"- Compiled forward FLOPs of the smallest granularity: "
               f"{bench[0]['flops_ratio']:.3f} of the universal model's.")
  out.append("")
  return out


def write(workdir: str, results: dict[str, Any]) -> str:
  plot_mixnmatch(workdir, results)
  m = results["model"]
  lines = ["# MatFormer study", ""]
  if results.get("smoke"):
    lines += [f"**Smoke-scale run (variant `{results['variant']}`)**: a small model trained "
              "for a few hundred steps on a CPU. The numbers show that the pipeline works; "
              "they are not findings at the paper's scale.", ""]
  lines += findings(results)
  lines += [
      f"Model: {m['num_layers']} layers, d_model {m['d_model']}, {m['num_heads']} heads "
      f"({m['num_kv_heads']} kv), d_ff {m['d_ff']}, granularities {results['granularities']}, "
      f"training mode `{m['mode']}`, byte vocabulary ({m['vocab_size']} ids). Every model: "
      f"{results['steps']} steps of {results['tokens_per_step']} tokens "
      f"({results['steps'] * results['tokens_per_step']:,} tokens). Held-out figures on "
      f"{int(results['eval_tokens']):,} validation tokens.", "",
      "## Nested sub-models vs independently trained models", "",
      "| d_ff | params | non-emb. | MatFormer sub-model loss | extracted plain LM loss | "
      "independent LM loss | difference |",
      "|---|---|---|---|---|---|---|"]
  for r in results["uniform"]:
    base = r.get("baseline_loss")
    diff = f"{r['loss'] - base:+.4f}" if base is not None else "-"
    lines.append(f"| {r['granularity']} | {r['params']:,} | {r['non_embedding']:,} | "
                 f"{r['loss']:.4f} | {r['extracted_loss']:.4f} | "
                 f"{_fmt(base) if base is not None else '-'} | {diff} |")
  lines += ["", "Difference < 0: the nested sub-model is better than the model of the same "
            "size trained alone on the same tokens. The extracted plain LM "
            "(`matformer.extract`, run by `TransformerLM`) equals the sub-model.", ""]
  mix = results["mixnmatch"]
  if mix:
    below = sum(r["gap_to_uniform_line"] <= 0 for r in mix)
    gaps = sorted(r["gap_to_uniform_line"] for r in mix)
    lines += ["## Mix'n'Match", "",
              f"{len(mix)} random per-layer width choices (plot: mixnmatch.png). "
              f"{below} of {len(mix)} lie on or below the piecewise-linear line through the "
              f"uniform sub-models (gap to the line: min {gaps[0]:+.4f}, median "
              f"{gaps[len(gaps) // 2]:+.4f}, max {gaps[-1]:+.4f} nats).", "",
              "| widths per layer | non-emb. params | loss | gap to line |", "|---|---|---|---|"]
    for r in sorted(mix, key=lambda r: r["non_embedding"]):
      lines.append(f"| {r['widths']} | {r['non_embedding']:,} | {r['loss']:.4f} | "
                   f"{r['gap_to_uniform_line']:+.4f} |")
    lines.append("")
  lines += ["## Consistency with the universal model", "",
            "Greedy next-token agreement and mean KL(p_universal || q_sub) per token; the "
            "baseline columns compare each independent LM with the largest independent LM.", "",
            "| d_ff | MatFormer agreement | MatFormer KL | independent agreement | "
            "independent KL |", "|---|---|---|---|---|"]
  for r in results["consistency"]:
    a = r["matformer"]
    b = r.get("baseline")
    lines.append(f"| {r['granularity']} | {a['agreement']:.3f} | {a['kl']:.4f} | "
                 + (f"{b['agreement']:.3f} | {b['kl']:.4f} |" if b else "- | - |"))
  lines += ["", "## Speculative decoding", "",
            "Target: the universal MatFormer. Draft: its smallest sub-model, or the "
            "independently trained LM of the same size. Speed-up = target-only KV-cache "
            "decoding time / speculative time (same prompts and tokens, median of timed "
            "runs after a compile run). Greedy outputs are checked identical to the "
            "target's.", "",
            "| draft | gamma | temperature | acceptance | tokens / target call | "
            "speculative s | target-only s | speed-up | identical |",
            "|---|---|---|---|---|---|---|---|---|"]
  for r in results["speculative"]:
    lines.append(f"| {r['draft']} | {r['gamma']} | {r['temperature']:g} | "
                 f"{r['acceptance']:.3f} | {r['tokens_per_round']:.2f} | {r['spec_s']:.3f} | "
                 f"{r['target_s']:.3f} | {r['speedup']:.2f} | {r.get('identical', '-')} |")
  lines += ["", "## FLOPs and speed per granularity", "",
            "Forward of the uniform sub-model; FLOPs from XLA's cost analysis of the compiled "
            "function; analytic = `matformer.flops_per_token` (training FLOPs per token).", "",
            "| d_ff | compiled GFLOPs | ratio | analytic ratio | tokens/s | ratio |",
            "|---|---|---|---|---|---|"]
  for r in results["benchmark"]:
    lines.append(f"| {r['granularity']} | {r['flops'] / 1e9:.3f} | {r['flops_ratio']:.3f} | "
                 f"{r['analytic_ratio']:.3f} | {r['tokens_per_s']:.0f} | "
                 f"{r['speed_ratio']:.2f} |")
  hf = results.get("hf_export")
  if hf:
    lines += ["", "## Hugging Face export", "",
              f"The extracted d_ff={hf['granularity']} LM was written with "
              f"`hf_checkpoint.save_hf` to `{os.path.basename(hf['path'])}/` and read back "
              f"with `load_hf`: max |logit difference| vs the sub-model "
              f"{hf['max_abs_logit_diff']:.2e}."]
  lines.append("")
  path = os.path.join(workdir, "report.md")
  files.write_text(path, "\n".join(lines))
  return path
