"""The offline test corpus of tools/make_test_warc.py: `--config=...:<corpus dir>`.

All DCLM-Baseline thresholds; the quality classifier is trained on the
corpus's quality_pos/neg files and keeps documents with P(hq) >= 0.5.

  python -m tools.make_test_warc --out=/tmp/curation_corpus
  python -m data_pipelines.curate \
      --config=data_pipelines/curation_configs/test_corpus.py:/tmp/curation_corpus \
      --workdir=/tmp/curated
"""
import os

from data_pipelines.curation import curation_config as config_lib


def get_config(arg: str = ""):
  corpus = arg or "/tmp/curation_corpus"
  c = config_lib.default_config()
  c.inputs = [
      {"name": "crawl", "paths": [os.path.join(corpus, "crawl-*.warc.gz")], "format": "warc"},
      {"name": "docstrings", "paths": [os.path.join(corpus, "docstrings.jsonl.zst")], "format": "jsonl"},
  ]
  c.quality.enabled = True
  c.quality.positive = os.path.join(corpus, "quality_pos.jsonl")
  c.quality.negative = os.path.join(corpus, "quality_neg.jsonl")
  c.quality.threshold = 0.5
  c.quality.dim = 8   # a 64 MB model file instead of 256 MB
  return c
