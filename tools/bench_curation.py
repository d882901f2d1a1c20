"""Throughput of each curation stage on the offline test corpus.

  python -m tools.bench_curation [--corpus=DIR] [--repeat=2] [--beam] \
      [--datatrove_path=DIR]

Builds the corpus of tools/make_test_warc.py (unless --corpus), runs the
in-process pipeline on a fresh workdir and prints docs/s and MB/s per step
(MB of each step's input text; for read/extract, of the raw HTML). --repeat
copies the WARC shards (the copies become exact duplicates) for longer runs.
--beam also times Beam's DirectRunner with 2 workers. If datatrove is
importable (from --datatrove_path, ':'-separated dirs appended to sys.path), its Gopher quality
and repetition filters run on the same extracted texts next to ours, with
their keep/drop agreement; otherwise that part is skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

from data_pipelines.curation import extract
from data_pipelines.curation import heuristics
from data_pipelines.curation import io as cio
from data_pipelines.curation import pipeline
from data_pipelines.curation import stats as cstats
from data_pipelines.curation_configs import test_corpus
from tools import make_test_warc


def _extracted_texts(corpus: str, cfg) -> list[str]:
  texts = []
  for path in sorted(os.listdir(corpus)):
    if path.endswith(".warc.gz"):
      for rec in cio.read_warc(os.path.join(corpus, path)):
        if "html" in rec:
          t = extract.html_to_text(rec["html"], cfg.extract, rec.get("charset", ""))
          if t:
            texts.append(heuristics.limit_newlines(heuristics.remove_urls(t), 2).strip())
  return texts


def bench_rules(texts: list[str], cfg) -> dict:
  rules = heuristics.quality_rules(cfg.heuristics)
  stop = frozenset(heuristics.read_list(cfg.heuristics.stop_words))
  t0 = time.thread_time()
  reasons = [heuristics.apply_rules(t, cfg.heuristics, rules, stop)[0] for t in texts]
  keep = [r is None for r in reasons]
  dt = time.thread_time() - t0
  mb = sum(len(t.encode()) for t in texts) / 1e6
  return {"docs": len(texts), "seconds": dt, "docs_per_s": len(texts) / dt, "mb_per_s": mb / dt, "keep": keep,
          "reasons": _count(reasons)}


def _count(reasons):
  out = {}
  for r in reasons:
    out[r or "keep"] = out.get(r or "keep", 0) + 1
  return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def bench_datatrove(texts: list[str], **quality_kw) -> dict | None:
  try:
    from datatrove.data import Document  # pylint: disable=g-import-not-at-top
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter  # pylint: disable=g-import-not-at-top
  except Exception as e:  # pylint: disable=broad-except
    print(f"datatrove: not available ({type(e).__name__}: {e}); skipped")
    return None
  try:
    quality_f, rep_f = GopherQualityFilter(**quality_kw), GopherRepetitionFilter()
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    rep_f.filter(docs[0])
    quality_f.filter(docs[0])   # warm up tokenizers (spaCy blank models, no downloads)
    t0 = time.thread_time()
    keep, reasons = [], []
    for d in docs:
      r = rep_f.filter(d)
      if r is True:
        r = quality_f.filter(d)
      keep.append(r is True)
      reasons.append(None if r is True else r[1])
    dt = time.thread_time() - t0
  except Exception as e:  # pylint: disable=broad-except
    print(f"datatrove: failed offline ({type(e).__name__}: {e}); skipped")
    return None
  mb = sum(len(t.encode()) for t in texts) / 1e6
  return {"docs": len(texts), "seconds": dt, "docs_per_s": len(texts) / dt, "mb_per_s": mb / dt, "keep": keep,
          "reasons": _count(reasons)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--corpus", default="")
  ap.add_argument("--repeat", type=int, default=1)
  ap.add_argument("--beam", action="store_true")
  ap.add_argument("--datatrove_path", default="")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix="bench_curation_")
  corpus = args.corpus or os.path.join(tmp, "corpus")
  if not args.corpus:
    make_test_warc.build(corpus)
  for r in range(1, args.repeat):
    for name in sorted(os.listdir(corpus)):
      if name.startswith("crawl-") and name.endswith(".warc.gz") and "-r" not in name:
        shutil.copy(os.path.join(corpus, name), os.path.join(corpus, name.replace(".warc.gz", f"-r{r}.warc.gz")))
  cfg = test_corpus.get_config(corpus)
  results = {}
  with contextlib.redirect_stdout(io.StringIO()):
    summary = pipeline.run(cfg, os.path.join(tmp, "inprocess"), "inprocess")
  print(f"== in-process pipeline: {summary['shards']} shards, {summary['docs_out']} docs out, "
        f"wall {summary['wall_seconds']:.2f}s")
  print(cstats.table(summary["stats"]))
  results["inprocess"] = {"wall_seconds": summary["wall_seconds"], "stats": summary["stats"]}
  if args.beam:
    with contextlib.redirect_stdout(io.StringIO()):
      bsum = pipeline.run(cfg, os.path.join(tmp, "beam"), "direct",
                          ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    print(f"== Beam DirectRunner (2 workers, multi_threading): wall {bsum['wall_seconds']:.2f}s "
          f"(in-process {summary['wall_seconds']:.2f}s)")
    results["beam_wall_seconds"] = bsum["wall_seconds"]

  for extra in filter(None, args.datatrove_path.split(os.pathsep)):
    sys.path.append(extra)   # after the venv: its packages win
  texts = _extracted_texts(corpus, cfg)
  ours = bench_rules(texts, cfg)
  print(f"== Gopher quality + repetition rules (per CPU-second) on {len(texts)} extracted pages "
        f"({sum(len(t.encode()) for t in texts) / 1e6:.3f} MB)")
  print(f"  armillary : {ours['docs_per_s']:8.1f} docs/s {ours['mb_per_s']:6.2f} MB/s  kept {sum(ours['keep'])}"
        f"  {ours['reasons']}")
  theirs = bench_datatrove(texts)
  if theirs:
    agree = sum(a == b for a, b in zip(ours["keep"], theirs["keep"])) / len(texts)
    print(f"  datatrove : {theirs['docs_per_s']:8.1f} docs/s {theirs['mb_per_s']:6.2f} MB/s  kept "
          f"{sum(theirs['keep'])}  {theirs['reasons']}\n  keep/drop agreement {agree:.3f}")
    results["datatrove"] = {k: v for k, v in theirs.items() if k != "keep"} | {"agreement": agree}
    # datatrove counts punctuation tokens as words without letters; DCLM splits on
    # white space. Without that one rule:
    alt = bench_datatrove(texts, max_non_alpha_words_ratio=None)
    if alt:
      agree2 = sum(a == b for a, b in zip(ours["keep"], alt["keep"])) / len(texts)
      print(f"  datatrove without its alphabetic-word rule: kept {sum(alt['keep'])}, "
            f"agreement {agree2:.3f}")
      results["datatrove"]["agreement_without_alpha_rule"] = agree2
  results["rules"] = {k: v for k, v in ours.items() if k != "keep"}
  if args.json_out:
    cio.write_json(args.json_out, results)
  shutil.rmtree(tmp, ignore_errors=True)
  return results


if __name__ == "__main__":
  main()
