"""DCLM-Baseline curation: RefinedWeb URL filters, English (p >= 0.65),
Gopher quality and repetition rules, RefinedWeb line modifiers, exact +
MinHash + Bloom-filter dedup, fastText quality filter (top 10%).

  python -m data_pipelines.curate --config=data_pipelines/curation_configs/dclm_baseline.py \
      --config.inputs='[{"name": "cc", "paths": ["/data/cc/*.warc.gz"], "format": "warc"}]' \
      --config.quality.positive='["/data/oh25.jsonl"]' --config.quality.negative='["/data/rw.jsonl"]' \
      --workdir=/data/curated --runner=direct --beam_args=--direct_num_workers=2
"""
from data_pipelines.curation import config as config_lib


def get_config(arg: str = ""):
  del arg
  c = config_lib.default_config()
  c.quality.enabled = True
  c.quality.top_fraction = 0.1
  return c
