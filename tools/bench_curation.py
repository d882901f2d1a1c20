"""Throughput of each curation stage on the offline test corpus, and the
end-to-end wall-clock rate of the in-process runner with 1, 2, ... workers.

  python -m tools.bench_curation [--corpus=DIR] [--extra_shards=8 --extra_pages=150] \
      [--workers=1,2] [--repeat=2] [--beam] [--datatrove_path=DIR]

Builds the corpus of tools/make_test_warc.py (unless --corpus; --extra_shards
adds WARC shards of distinct pages so that there is something to share out),
runs the in-process pipeline on a fresh workdir for each --workers count
(end to end: documents read / wall seconds, with the load average before and
after, since the machine may be shared; the outputs must be byte-identical),
and prints docs/CPU-s and MB/CPU-s per step (MB of each step's input text;
for read/extract, of the raw HTML). --repeat copies the WARC shards (the
copies become exact duplicates) for longer runs.
--beam also times Beam's DirectRunner with 2 workers. If datatrove is
importable (from --datatrove_path, ':'-separated dirs appended to sys.path), its Gopher quality
and repetition filters run on the same extracted texts next to ours, with
their keep/drop agreement; otherwise that part is skipped.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os
import resource
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


def _outputs(workdir: str) -> dict[str, bytes]:
  out = {}
  for p in sorted(glob.glob(os.path.join(workdir, "*", "*"))):
    if not p.endswith(("stats.json", "threshold.json")):
      with open(p, "rb") as f:
        out[os.path.relpath(p, workdir)] = f.read()
  return out


def _cpu_seconds() -> float:
  """CPU seconds of this process and its finished (pool) children."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bench_workers(cfg, tmp: str, counts: list[int]) -> list[dict]:
  """End-to-end runs on fresh workdirs, one per worker count."""
  rows, ref = [], None
  for i, n in enumerate(counts):
    cfg.workers = n
    workdir = os.path.join(tmp, f"inprocess-{i}-w{n}")
    load_before = os.getloadavg()
    cpu0 = _cpu_seconds()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
      summary = pipeline.run(cfg, workdir, "inprocess")
    cpu = _cpu_seconds() - cpu0
    files = _outputs(workdir)
    ref = files if ref is None else ref
    rows.append({"workers": n, "wall_seconds": summary["wall_seconds"], "docs_in": summary["docs_in"],
                 "docs_out": summary["docs_out"], "docs_per_s": summary["docs_in"] / summary["wall_seconds"],
                 "cpu_seconds": cpu, "stage_wall_seconds": summary["stage_wall_seconds"],
                 "load_before": load_before, "load_after": os.getloadavg(),
                 "identical_to_first": files == ref, "summary": summary})
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--corpus", default="")
  ap.add_argument("--extra_shards", type=int, default=0)
  ap.add_argument("--extra_pages", type=int, default=150)
  ap.add_argument("--workers", default="0", help="comma-separated worker counts (0: all cores)")
  ap.add_argument("--repeat", type=int, default=1)
  ap.add_argument("--beam", action="store_true")
  ap.add_argument("--datatrove_path", default="")
  ap.add_argument("--json_out", default="")
  args = ap.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix="bench_curation_")
  corpus = args.corpus or os.path.join(tmp, "corpus")
  if not args.corpus:
    make_test_warc.build(corpus, extra_shards=args.extra_shards, extra_pages=args.extra_pages)
  for r in range(1, args.repeat):
    for name in sorted(os.listdir(corpus)):
      if name.startswith("crawl-") and name.endswith(".warc.gz") and "-r" not in name:
        shutil.copy(os.path.join(corpus, name), os.path.join(corpus, name.replace(".warc.gz", f"-r{r}.warc.gz")))
  cfg = test_corpus.get_config(corpus)
  results = {}
  counts = [int(n) for n in args.workers.split(",")]
  runs = bench_workers(cfg, tmp, counts)
  summary = runs[0]["summary"]
  mb = sum(os.path.getsize(p) for p in glob.glob(os.path.join(corpus, "crawl-*.warc.gz")))
  print(f"== in-process pipeline, end to end: {summary['shards']} shards ({mb / 1e6:.1f} MB of WARC), "
        f"{summary['docs_in']} docs read, {summary['docs_out']} out; {os.cpu_count()} cores")
  for r in runs:
    stages = " ".join(f"{k} {v:.1f}" for k, v in r["stage_wall_seconds"].items())
    print(f"  workers={r['summary']['workers']:<3} wall {r['wall_seconds']:7.2f} s  "
          f"{r['docs_per_s']:7.1f} docs/s (wall)  CPU {r['cpu_seconds']:6.1f} s "
          f"(CPU/wall {r['cpu_seconds'] / r['wall_seconds']:.2f})  load average before "
          f"{r['load_before'][0]:.2f} after {r['load_after'][0]:.2f}  same bytes as the first run: "
          f"{r['identical_to_first']}\n    stage wall seconds: {stages}")
  print(cstats.table(summary["stats"], summary["wall_seconds"], summary["workers"]))
  results["inprocess"] = [{k: v for k, v in r.items() if k != "summary"} | {"workers": r["summary"]["workers"]}
                          for r in runs]
  results["stats"] = summary["stats"]
  if args.beam:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
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
