"""DCLM-style data curation: raw HTML/WARC -> filtered, deduplicated,
quality-scored JSONL.zst shards -> seqio tasks and mixtures.

Modules: io (readers/writers), extract (HTML main content), heuristics
(DCLM/RefinedWeb/Gopher rules), langid, dedup (exact, Bloom n-gram, MinHash
LSH), quality (fastText classifier), mixing, seqio_tasks, config, stats;
stages (the stages and their done-markers), inprocess and beam_runner (the
two runners, each importing only stages) and pipeline (the dispatcher).
"""
