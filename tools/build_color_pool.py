"""Builds the multi-domain CoLoR-Filter pool from text this Debian machine has
offline (see data_pipelines/color_filter/pool_build.py for the split).

  python -m tools.build_color_pool --out=runs/color_pool --docs_per_domain=1000

Where each domain's files come from, in this order:
  1. installed under --root (default "/"): manual pages, Debian changelogs,
     and any documentation package that is installed;
  2. otherwise the package's .deb in --apt_cache (apt's download cache,
     default /var/cache/apt/archives), unpacked with `dpkg-deb -x` into
     --staging (nothing is installed, nothing is downloaded).
A domain found in neither place is left out with a warning (the target
domain must be found). The manifest names the root or .deb of every domain.

Packages: python -> python3.X-doc (the manual as GNU info), dictionary ->
dict-gcide, fortunes -> fortunes / fortunes-min, man-c-api -> manpages-dev,
man-commands -> installed section 1/8 pages.
"""
from __future__ import annotations

import os

from absl import app
from absl import flags

from data_pipelines.color_filter import pool_build
from data_pipelines.color_filter import pool_sources

_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_ROOT = flags.DEFINE_string("root", "/", "filesystem root holding installed files")
_APT_CACHE = flags.DEFINE_string("apt_cache", "/var/cache/apt/archives",
                                 "directory of downloaded .deb files")
_STAGING = flags.DEFINE_string("staging", "", "where .deb files are unpacked "
                               "(default: <out>/_debs)")
_DOMAINS = flags.DEFINE_list("domains", list(pool_sources.DOMAINS), "domains to read")
_TARGET = flags.DEFINE_string("target_domain", "python", "the target domain")
_DOCS = flags.DEFINE_integer("docs_per_domain", 1000, "documents kept per domain")
_MIN_CHARS = flags.DEFINE_integer("min_chars", 300, "shortest document (characters)")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 1500, "longest document (characters)")
_TARGET_FRACTION = flags.DEFINE_float("target_fraction", 0.2,
                                      "share of the target domain's documents in the target set")
_HELDOUT_FRACTION = flags.DEFINE_float("heldout_fraction", 0.1,
                                       "share of every domain's documents held out")
_SHARDS = flags.DEFINE_integer("num_shards", 4, "pool shards")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the sample and the split")

def main(argv):
  del argv
  unknown = [d for d in _DOMAINS.value if d not in pool_sources.DOMAINS]
  if unknown:
    raise app.UsageError(f"--domains: unknown {unknown}; known: {list(pool_sources.DOMAINS)}")
  staging = _STAGING.value or os.path.join(_OUT.value, "_debs")
  roots, sources = pool_build.resolve_roots(_DOMAINS.value, _ROOT.value, _APT_CACHE.value, staging)
  if _TARGET.value not in roots:
    raise app.UsageError(f"--target_domain={_TARGET.value!r}: its files were not found")
  manifest = pool_build.build_pool(
      roots, _OUT.value, target_domain=_TARGET.value, docs_per_domain=_DOCS.value,
      min_chars=_MIN_CHARS.value, max_chars=_MAX_CHARS.value,
      target_fraction=_TARGET_FRACTION.value, heldout_fraction=_HELDOUT_FRACTION.value,
      num_shards=_SHARDS.value, seed=_SEED.value, sources=sources)
  print(f"pool written to {_OUT.value}: "
        + ", ".join(f"{s} {sum(c.values())}" for s, c in manifest["counts"].items()))


if __name__ == "__main__":
  app.run(main)
