"""The curation stages, as deterministic functions of the files before them,
and the bookkeeping of which stages and shards are done.

  A. filter   (per input shard, per document): read -> extract -> URL filter ->
              modifiers -> language id -> Gopher quality/repetition rules ->
              RefinedWeb line modifiers + removed-words rule.
              workdir/filtered/<shard>.{jsonl.zst,attrs.jsonl.zst,stats.json}
  B. dedup    (global, in canonical document order): exact -> MinHash LSH ->
              Bloom-filter paragraph/document n-gram dedup.
              workdir/dedup/{decisions.jsonl.zst,clusters.jsonl.zst,stats.json}
  C. quality  (global): train or load the fastText classifier, score every
              surviving document, fix the threshold.
              workdir/quality/{model.bin,scores.jsonl.zst,threshold.json}
  D. write    (per shard): apply B and C, write the curated shard and its
              attribute side file.
              workdir/output/<shard>.{jsonl.zst,attrs.jsonl.zst,stats.json}

Every file is written atomically and a shard's stats file is written last, so
a stats file marks a finished shard; a killed run redoes only unfinished
shards and stages. Each stage is a deterministic function of the files before
it, so a resumed run writes what an uninterrupted one would, and both runners
write the same bytes.

This module is the bottom of the curation package's runner layer: the
in-process runner (`inprocess.py`) and the Beam runner (`beam_runner.py`)
import only it, and the dispatcher (`pipeline.py`) imports all three. Whatever
runs a stage, it calls these functions, so which files exist (`plan`) is the
one shared record of what is done.

Documents are ordered by `order` = "<shard>/<index in shard>" (shards sorted
by input and path); exact, near-duplicate and Bloom survivors are the first
in that order.
"""
from __future__ import annotations

import functools
import glob
import json
import os
import time
from typing import Any, Iterable, Iterator, NamedTuple, Optional

import ml_collections

from data_pipelines.curation import dedup
from data_pipelines.curation import extract
from data_pipelines.curation import heuristics
from data_pipelines.curation import io as cio
from data_pipelines.curation import langid
from data_pipelines.curation import quality
from data_pipelines.curation import stats as cstats

# Step timings are CPU seconds of the working thread: comparable between runs on
# a shared machine and additive across Beam's worker threads.
clock = time.thread_time
CRASH_ENV = "ARMILLARY_CURATE_CRASH_AFTER"   # "<stage>:<n>": hard exit after n shard writes


class Shard(NamedTuple):
  key: str
  source: str
  path: str
  fmt: str
  text_field: str = "text"
  text_split: str = "file"


def list_shards(cfg) -> list[Shard]:
  """One shard per input file, keyed `<input name>-<5-digit index>`."""
  shards = []
  for spec in cfg.inputs:
    paths = sorted({p for pattern in spec["paths"] for p in glob.glob(pattern)})
    for j, path in enumerate(paths):
      shards.append(Shard(f"{spec['name']}-{j:05d}", spec["name"], path, spec.get("format", "jsonl"),
                          spec.get("text_field", "text") or "text", spec.get("text_split", "file") or "file"))
  if not shards:
    raise FileNotFoundError(f"no input files match config.inputs={list(cfg.inputs)}")
  return shards


def config_to_json(cfg) -> str:
  d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else cfg
  return json.dumps(d, sort_keys=True)


def config_from_json(s: str) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(s))


class Paths:
  def __init__(self, workdir: str):
    self.workdir = workdir
    self.filtered = os.path.join(workdir, "filtered")
    self.dedup = os.path.join(workdir, "dedup")
    self.quality = os.path.join(workdir, "quality")
    self.output = os.path.join(workdir, "output")

  def shard_file(self, stage_dir: str, key: str, kind: str) -> str:
    suffix = {"docs": ".jsonl.zst", "attrs": ".attrs.jsonl.zst", "stats": ".stats.json"}[kind]
    return os.path.join(stage_dir, key + suffix)


_crash_counts: dict[str, int] = {}


def maybe_crash(stage: str) -> None:
  """Test hook: os._exit after the n-th finished shard of `stage` (a hard kill)."""
  spec = os.environ.get(CRASH_ENV, "")
  if not spec:
    return
  name, _, n = spec.partition(":")
  if name == stage:
    _crash_counts[stage] = _crash_counts.get(stage, 0) + 1
    if _crash_counts[stage] >= int(n):
      os._exit(17)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# Stage A: per-document filtering.

class Resources(NamedTuple):
  banlists: heuristics.UrlBanlists
  langid: Optional[langid.LangIdModel]
  stop_words: frozenset
  rules: list


@functools.lru_cache(maxsize=4)
def resources(cfg_json: str) -> Resources:
  """Ban lists, language model, stop words and rules, loaded once per process."""
  cfg = config_from_json(cfg_json)
  banlists = (heuristics.load_banlists(cfg.url_filter) if cfg.url_filter.enabled
              else heuristics.UrlBanlists(frozenset(), (), frozenset(), frozenset()))
  model = langid.load(cfg.langid.model) if cfg.langid.enabled else None
  stop = frozenset(heuristics.read_list(cfg.heuristics.stop_words))
  return Resources(banlists, model, stop, heuristics.quality_rules(cfg.heuristics))


def nbytes(text: str) -> int:
  return len(text.encode("utf-8", errors="replace"))


def process_record(rec: dict, order: str, cfg, res: Resources) -> tuple[Optional[dict], dict, dict]:
  """One raw record through stage A -> (document or None, attributes, stats).

  Attributes hold each step's decision: "keep", a modifier's effect, or the
  reason it removed the document.
  """
  st = cstats.new()
  attrs: dict[str, Any] = {"id": rec.get("id", ""), "url": rec.get("url", ""),
                           "source": rec.get("source", ""), "order": order, "steps": {}}
  steps = attrs["steps"]

  def drop(step: str, rule: str, why: str, nb_in: int, t0: float):
    cstats.record(st, step, bytes_in=nb_in, removed=rule, seconds=clock() - t0)
    steps[step] = f"{rule}: {why}" if why else rule
    return None, attrs, st

  t0 = clock() - rec.pop("_read_seconds", 0.0)   # time the reader spent on it
  raw_bytes = len(rec.get("html") or b"") or nbytes(rec.get("text", ""))
  if "malformed" in rec:
    return drop("read", "malformed:" + rec["malformed"], "", 0, t0)
  if "skipped" in rec:
    return drop("read", "skipped:" + rec["skipped"], "", raw_bytes, t0)
  cstats.record(st, "read", bytes_in=raw_bytes, bytes_out=raw_bytes, seconds=clock() - t0)

  t0 = clock()
  if "html" in rec:
    text = extract.html_to_text(rec["html"], cfg.extract, rec.get("charset", ""))
    if text is None:
      return drop("extract", "no_text", "", raw_bytes, t0)
    cstats.record(st, "extract", bytes_in=raw_bytes, bytes_out=nbytes(text),
                  seconds=clock() - t0)
  else:
    text = rec["text"]
  nb = nbytes(text)

  if cfg.url_filter.enabled:
    t0 = clock()
    rule, why = heuristics.url_filter(attrs["url"], res.banlists)
    if rule:
      return drop("url_filter", rule, why, nb, t0)
    cstats.record(st, "url_filter", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["url_filter"] = "keep"

  t0 = clock()
  if cfg.modifiers.remove_urls:
    text = heuristics.remove_urls(text)
  text = heuristics.limit_newlines(text, cfg.modifiers.max_consecutive_newlines).strip()
  if not text:
    return drop("modifiers", "empty", "", nb, t0)
  cstats.record(st, "modifiers", bytes_in=nb, bytes_out=nbytes(text), seconds=clock() - t0)
  nb = nbytes(text)

  if res.langid is not None:
    t0 = clock()
    lang, prob = langid.top_language(res.langid, text, cfg.langid.max_chars)
    attrs["language"], attrs["language_score"] = lang, round(prob, 4)
    if lang not in cfg.langid.keep or prob < cfg.langid.threshold:
      return drop("langid", "not_" + "_".join(cfg.langid.keep) if lang not in cfg.langid.keep
                  else "low_confidence", f"{lang} p={prob:.3f}", nb, t0)
    cstats.record(st, "langid", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["langid"] = "keep"

  if cfg.heuristics.enabled:
    t0 = clock()
    rule, why = heuristics.apply_rules(text, cfg.heuristics, res.rules, res.stop_words)
    if rule:
      return drop("heuristics", rule, why, nb, t0)
    cstats.record(st, "heuristics", bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
    steps["heuristics"] = "keep"

  lm = cfg.line_modifiers
  if lm.enabled:
    t0 = clock()
    words_before = len(heuristics.split_words(text))
    new = text
    for modifier in heuristics.LINE_MODIFIERS:
      new = modifier(new, lm)
    if not new.strip():
      return drop("line_modifiers", "empty", "", nb, t0)
    why = heuristics.removed_words(words_before, new, lm)
    if why:
      return drop("line_modifiers", "removed_words", why, nb, t0)
    steps["line_modifiers"] = "keep" if new == text else "modified"
    text = new
    cstats.record(st, "line_modifiers", bytes_in=nb, bytes_out=nbytes(text),
                  seconds=clock() - t0)

  doc = {"id": attrs["id"], "url": attrs["url"], "source": attrs["source"], "text": text,
         "order": order}
  return doc, attrs, st


def shard_records(shard: Shard) -> Iterator[tuple[int, dict]]:
  """(index, record) of one input shard; a reader that fails mid-file yields
  one malformed record and stops (the run goes on)."""
  i = -1
  try:
    records = cio.read_input(shard.path, shard.fmt, shard.source, text_field=shard.text_field,
                             text_split=shard.text_split)
    t0 = clock()
    for i, rec in enumerate(records):
      rec["_read_seconds"] = clock() - t0
      yield i, rec
      t0 = clock()
  except Exception as e:  # pylint: disable=broad-except
    yield i + 1, {"id": cio.doc_id(shard.key, "error"), "source": shard.source,
                  "malformed": f"reader_error:{type(e).__name__}"}


def order_key(shard_key: str, index: int) -> str:
  return f"{shard_key}/{index:07d}"


def write_filtered_shard(paths: Paths, key: str, results: Iterable[tuple[int, Optional[dict], dict, dict]],
                         cfg) -> dict:
  """Writes a shard's surviving docs, attributes and stats (stats last)."""
  results = sorted(results, key=lambda r: r[0])
  docs = [r[1] for r in results if r[1] is not None]
  st = cstats.merge(r[3] for r in results)
  cio.write_jsonl_zst(paths.shard_file(paths.filtered, key, "docs"), docs, cfg.output.zstd_level)
  cio.write_jsonl_zst(paths.shard_file(paths.filtered, key, "attrs"), (r[2] for r in results),
                      cfg.output.zstd_level)
  cio.write_json(paths.shard_file(paths.filtered, key, "stats"), st)
  return st


def filter_shard(paths: Paths, shard: Shard, cfg, cfg_json: str) -> dict:
  """Stage A for one shard, record by record in this process."""
  res = resources(cfg_json)
  results = []
  for i, rec in shard_records(shard):
    doc, attrs, st = process_record(rec, order_key(shard.key, i), cfg, res)
    results.append((i, doc, attrs, st))
  return write_filtered_shard(paths, shard.key, results, cfg)


# ----------------------------------------------------------------------------
# Stage B: dedup.

def read_filtered(paths: Paths, key: str) -> Iterator[dict]:
  yield from cio.read_rows(paths.shard_file(paths.filtered, key, "docs"))


def exact_drops(groups: Iterable[list[str]]) -> dict[str, str]:
  """{order: survivor order} for every non-first member of an exact-hash group."""
  out = {}
  for members in groups:
    members = sorted(members)
    for m in members[1:]:
      out[m] = members[0]
  return out


def bloom_pass(paths: Paths, keys: list[str], drop: set, cfg) -> tuple[dict, dict, dict, dict]:
  """Sequential Bloom dedup over the surviving docs in canonical order.

  Returns ({order: new text or None}, {order: id}, stats, filter info). The filter is sized
  for the n-grams counted in a first pass (or config.expected_ngrams), so its
  memory is -n ln p / (ln 2)^2 bits.
  """
  c = cfg.dedup.bloom
  keys = sorted(keys)   # canonical order: order keys sort as strings
  ids: dict[str, str] = {}
  st = cstats.new()
  if not c.enabled:
    for key in keys:
      for d in read_filtered(paths, key):
        ids[d["order"]] = d["id"]
    return {}, ids, st, {}
  expected = int(c.expected_ngrams)
  if not expected:
    expected = sum(dedup.count_ngrams(d["text"], c.ngram) for key in keys
                   for d in read_filtered(paths, key) if d["order"] not in drop)
  bloom = dedup.BloomFilter(max(expected, 1), c.false_positive_rate)
  changed: dict[str, Optional[str]] = {}
  for key in keys:
    for d in read_filtered(paths, key):
      ids[d["order"]] = d["id"]
      if d["order"] in drop:
        continue
      t0 = clock()
      nb = nbytes(d["text"])
      dec = dedup.bloom_dedup_one(bloom, d["text"], c)
      if dec.text is None:
        changed[d["order"]] = None
        cstats.record(st, "bloom_dedup", bytes_in=nb, removed="duplicate_ngrams",
                      seconds=clock() - t0)
      else:
        if dec.text != d["text"]:
          changed[d["order"]] = dec.text
        cstats.record(st, "bloom_dedup", bytes_in=nb, bytes_out=nbytes(dec.text),
                      seconds=clock() - t0)
  info = {"expected_ngrams": expected, "bits": bloom.m, "hashes": bloom.k, "bytes": bloom.nbytes,
          "false_positive_rate": c.false_positive_rate}
  return changed, ids, st, info


def write_dedup(paths: Paths, cfg, exact: dict[str, str], near: dict[str, str],
                bloom: dict[str, Optional[str]], ids: dict[str, str], st: dict, info: dict) -> None:
  """Writes decisions (one row per touched document), clusters and stats."""
  rows = []
  for order in sorted(set(exact) | set(near) | set(bloom)):
    if order in exact:
      rows.append({"order": order, "drop": "exact_dup", "of": ids[exact[order]]})
    elif order in near and near[order] != order:
      rows.append({"order": order, "drop": "near_dup", "cluster": ids[near[order]]})
    elif order in bloom:
      text = bloom[order]
      rows.append({"order": order, "drop": "bloom_dup"} if text is None else {"order": order, "text": text})
  clusters: dict[str, list[str]] = {}
  for order, root in near.items():
    clusters.setdefault(root, []).append(order)
  crow = [{"cluster_id": ids[root], "survivor": ids[root],
           "members": [ids[o] for o in sorted(members)]} for root, members in sorted(clusters.items())]
  cio.write_jsonl_zst(os.path.join(paths.dedup, "decisions.jsonl.zst"), rows, cfg.output.zstd_level)
  cio.write_jsonl_zst(os.path.join(paths.dedup, "clusters.jsonl.zst"), crow, cfg.output.zstd_level)
  cio.write_json(os.path.join(paths.dedup, "bloom.json"), info)
  cio.write_json(os.path.join(paths.dedup, "stats.json"), st)


def dedup_stats(exact: dict, near: dict, n_docs: int, bytes_by_order: dict, t_exact: float,
                t_near: float) -> dict:
  st = cstats.new()
  n_exact = len(exact)
  n_near = sum(1 for o, r in near.items() if o != r)
  cstats.record(st, "exact_dedup", n=n_docs - n_exact, seconds=t_exact,
                bytes_in=sum(bytes_by_order.values()) if bytes_by_order else 0,
                bytes_out=sum(v for o, v in bytes_by_order.items() if o not in exact))
  if n_exact:
    cstats.record(st, "exact_dedup", n=n_exact, removed="exact_dup",
                  bytes_in=sum(bytes_by_order[o] for o in exact))
  rest = {o: v for o, v in bytes_by_order.items() if o not in exact}
  near_drop = {o for o, r in near.items() if o != r}
  cstats.record(st, "minhash_dedup", n=len(rest) - n_near, seconds=t_near,
                bytes_in=sum(v for o, v in rest.items() if o not in near_drop),
                bytes_out=sum(v for o, v in rest.items() if o not in near_drop))
  if n_near:
    cstats.record(st, "minhash_dedup", n=n_near, removed="near_dup",
                  bytes_in=sum(rest[o] for o in near_drop))
  return st


def load_decisions(paths: Paths) -> dict[str, dict]:
  return {r["order"]: r for r in cio.read_rows(os.path.join(paths.dedup, "decisions.jsonl.zst"))}


def deduped_docs(paths: Paths, key: str, decisions: dict[str, dict]) -> Iterator[dict]:
  """The shard's filtered docs with dedup applied (dropped docs left out)."""
  for d in read_filtered(paths, key):
    dec = decisions.get(d["order"])
    if dec is None:
      yield d
    elif "drop" not in dec:
      yield {**d, "text": dec["text"]}


# ----------------------------------------------------------------------------
# Stage C: quality.

def quality_model_path(paths: Paths, cfg) -> str:
  if cfg.quality.model:
    return cfg.quality.model
  path = os.path.join(paths.quality, "model.bin")
  if not os.path.exists(path):
    quality.train(list(cfg.quality.positive), list(cfg.quality.negative), path, cfg.quality)
  return path


@functools.lru_cache(maxsize=2)
def _quality_model(path: str):
  return quality.load(path)


def write_scores(paths: Paths, cfg, scored: Iterable[tuple[str, float]], seconds: float,
                 nbytes: int) -> None:
  scored = sorted(scored)
  c = cfg.quality
  thr = (quality.top_fraction_threshold((s for _, s in scored), c.top_fraction)
         if c.top_fraction > 0 else float(c.threshold))
  cio.write_jsonl_zst(os.path.join(paths.quality, "scores.jsonl.zst"),
                      ({"order": o, "score": s} for o, s in scored), cfg.output.zstd_level)
  cio.write_json(os.path.join(paths.quality, "threshold.json"),
                 {"threshold": thr, "top_fraction": c.top_fraction, "docs": len(scored),
                  "seconds": seconds, "bytes": nbytes})


def score_docs(docs: Iterable[dict], model_path: str, label: str) -> Iterator[tuple[str, float, int]]:
  model = _quality_model(model_path)
  for d in docs:
    yield d["order"], round(quality.score(model, d["text"], label), 6), nbytes(d["text"])


def load_scores(paths: Paths) -> tuple[dict[str, float], dict]:
  meta = cio.read_json(os.path.join(paths.quality, "threshold.json"))
  scores = {r["order"]: r["score"] for r in cio.read_rows(os.path.join(paths.quality, "scores.jsonl.zst"))}
  return scores, meta


# ----------------------------------------------------------------------------
# Stage D: write the curated shards.

def write_output_shard(paths: Paths, key: str, cfg, decisions: dict[str, dict],
                       scores: Optional[dict[str, float]], qmeta: Optional[dict]) -> dict:
  st = cstats.new()
  t0 = clock()
  attrs = {a["order"]: a for a in cio.read_rows(paths.shard_file(paths.filtered, key, "attrs"))}
  out = []
  for d in read_filtered(paths, key):
    a = attrs[d["order"]]
    dec = decisions.get(d["order"])
    if dec is not None and "drop" in dec:
      a["steps"]["dedup"] = dec["drop"] + f": of {dec.get('of') or dec.get('cluster')}" \
          if dec["drop"] != "bloom_dup" else dec["drop"]
      if dec["drop"] == "near_dup":
        a["cluster_id"] = dec["cluster"]
      continue
    text = d["text"] if dec is None else dec["text"]
    a["steps"]["dedup"] = "keep" if dec is None else "paragraphs_removed"
    if scores is not None:
      s = scores[d["order"]]
      a["quality_score"] = s
      nb = nbytes(text)
      if s < qmeta["threshold"]:
        a["steps"]["quality"] = f"below_threshold: {s:.4f} < {qmeta['threshold']:.4f}"
        cstats.record(st, "quality", bytes_in=nb, removed="below_threshold")
        continue
      a["steps"]["quality"] = "keep"
      cstats.record(st, "quality", bytes_in=nb, bytes_out=nb)
    out.append({"id": d["id"], "url": d["url"], "source": d["source"], "text": text})
  cio.write_jsonl_zst(paths.shard_file(paths.output, key, "docs"), out, cfg.output.zstd_level)
  if cfg.output.attributes:
    cio.write_jsonl_zst(paths.shard_file(paths.output, key, "attrs"),
                        (attrs[o] for o in sorted(attrs)), cfg.output.zstd_level)
  nb = sum(nbytes(d["text"]) for d in out)
  cstats.record(st, "write", n=len(out), bytes_in=nb, bytes_out=nb, seconds=clock() - t0)
  cio.write_json(paths.shard_file(paths.output, key, "stats"), st)
  return st


# ----------------------------------------------------------------------------
# Bookkeeping: what is done, what is left.
#
# A stage's marker is the file it writes last: a shard's stats file for stages
# A and D, dedup/stats.json for B, quality/threshold.json for C. A marker
# exists only once everything before it is on disk, so "marker exists" is
# "done", whichever runner (or killed process) wrote it.

def filter_done(paths: Paths, key: str) -> bool:
  return os.path.exists(paths.shard_file(paths.filtered, key, "stats"))


def dedup_done(paths: Paths) -> bool:
  return os.path.exists(os.path.join(paths.dedup, "stats.json"))


def quality_done(paths: Paths) -> bool:
  return os.path.exists(os.path.join(paths.quality, "threshold.json"))


def write_done(paths: Paths, key: str) -> bool:
  return os.path.exists(paths.shard_file(paths.output, key, "stats"))


class Plan(NamedTuple):
  """The work a (resumed) run has left, in stage order."""
  filter: list[Shard]   # shards without a filtered stats file
  dedup: bool
  quality: bool         # only when config.quality.enabled
  write: list[str]      # shard keys without an output stats file

  @property
  def empty(self) -> bool:
    return not (self.filter or self.dedup or self.quality or self.write)


def plan(paths: Paths, shards: list[Shard], cfg) -> Plan:
  """What is left to do. Computed once, before any stage runs: a stage only
  ever adds its own markers, so the later stages' part of the plan cannot
  change while the earlier ones run."""
  return Plan(filter=[s for s in shards if not filter_done(paths, s.key)],
              dedup=not dedup_done(paths),
              quality=bool(cfg.quality.enabled) and not quality_done(paths),
              write=[s.key for s in shards if not write_done(paths, s.key)])


# Keys that earlier versions wrote into config.json and that never changed
# what a run computes: {key: the only value they ever had}.
_RETIRED_CONFIG_KEYS = {"workdir": ""}


def check_workdir(paths: Paths, cfg_json: str) -> None:
  """A workdir belongs to one config; resuming with another one is an error."""
  path = os.path.join(paths.workdir, "config.json")
  if os.path.exists(path):
    saved = cio.read_json(path)
    for key, value in _RETIRED_CONFIG_KEYS.items():
      if saved.get(key, value) == value:
        saved.pop(key, None)
    if saved != json.loads(cfg_json):
      raise ValueError(f"{paths.workdir} holds a run with a different config; use a fresh --workdir")
  else:
    cio.write_json(path, json.loads(cfg_json))


def collect_stats(paths: Paths, keys: list[str], cfg) -> dict:
  parts = [cio.read_json(paths.shard_file(paths.filtered, k, "stats")) for k in keys]
  parts.append(cio.read_json(os.path.join(paths.dedup, "stats.json")))
  parts += [cio.read_json(paths.shard_file(paths.output, k, "stats")) for k in keys]
  st = cstats.merge(parts)
  if cfg.quality.enabled and "quality" in st:
    meta = cio.read_json(os.path.join(paths.quality, "threshold.json"))
    st["quality"]["seconds"] += meta["seconds"]
  return st


output_files = cio.output_shards   # the curated document shards of a run
