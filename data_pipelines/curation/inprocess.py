"""The in-process runner: every curation stage as a plain Python loop.

Stage A filters shard after shard, B builds the exact-hash groups and the
MinHash LSH clusters over all surviving documents and then runs the Bloom
pass, C scores every document with one model, D writes shard after shard.
All the work is done by `stages`; this module only orders it, prints
progress and fires the crash hook that the resume tests use.
"""
from __future__ import annotations

from data_pipelines.curation import dedup
from data_pipelines.curation import stages
from data_pipelines.curation import stats as cstats

clock = stages.clock


class Runner:
  """Runs the stages of one config in this process (see `pipeline.run`)."""

  def __init__(self, cfg, cfg_json: str):
    self.cfg, self.cfg_json = cfg, cfg_json

  def filter(self, paths: stages.Paths, todo: list[stages.Shard]) -> None:
    progress = cstats.ProgressLine(len(todo), "filter")
    for shard in todo:
      st = stages.filter_shard(paths, shard, self.cfg, self.cfg_json)
      progress.update(1, docs=st.get("read", {}).get("in", 0))
      stages.maybe_crash("filter")

  def dedup(self, paths: stages.Paths, keys: list[str]) -> None:
    cfg = self.cfg
    t0 = clock()
    groups: dict[str, list[str]] = {}
    nbytes: dict[str, int] = {}
    if cfg.dedup.exact:
      for key in keys:
        for d in stages.read_filtered(paths, key):
          groups.setdefault(dedup.exact_key(d["text"]), []).append(d["order"])
          nbytes[d["order"]] = stages.nbytes(d["text"])
    else:
      nbytes = {d["order"]: stages.nbytes(d["text"])
                for key in keys for d in stages.read_filtered(paths, key)}
    exact = stages.exact_drops(groups.values())
    t_exact = clock() - t0
    t0 = clock()
    near: dict[str, str] = {}
    mc = cfg.dedup.minhash
    if mc.enabled:
      mh = dedup.make_minhasher(mc.num_perm, mc.ngram, mc.seed)
      sigs = ((d["order"], dedup.signature(mh, dedup.shingles(d["text"], mc.ngram)))
              for key in keys for d in stages.read_filtered(paths, key) if d["order"] not in exact)
      near = dedup.minhash_clusters(sigs, mc)
    t_near = clock() - t0
    st = stages.dedup_stats(exact, near, len(nbytes), nbytes, t_exact, t_near)
    drop = set(exact) | {o for o, r in near.items() if o != r}
    bloom, ids, bst, info = stages.bloom_pass(paths, keys, drop, cfg)
    stages.write_dedup(paths, cfg, exact, near, bloom, ids, cstats.merge([st, bst]), info)
    print("[curate:dedup] done", flush=True)

  def quality(self, paths: stages.Paths, keys: list[str]) -> None:
    cfg = self.cfg
    decisions = stages.load_decisions(paths)
    model_path = stages.quality_model_path(paths, cfg)
    t0 = clock()
    scored = [s for key in keys
              for s in stages.score_docs(stages.deduped_docs(paths, key, decisions), model_path,
                                         cfg.quality.label)]
    stages.write_scores(paths, cfg, [(o, s) for o, s, _ in scored], clock() - t0,
                        sum(b for _, _, b in scored))
    print("[curate:quality] done", flush=True)

  def write(self, paths: stages.Paths, todo: list[str]) -> None:
    decisions = stages.load_decisions(paths)
    scores, qmeta = stages.load_scores(paths) if self.cfg.quality.enabled else (None, None)
    progress = cstats.ProgressLine(len(todo), "write")
    for key in todo:
      stages.write_output_shard(paths, key, self.cfg, decisions, scores, qmeta)
      progress.update(1)
      stages.maybe_crash("write")
