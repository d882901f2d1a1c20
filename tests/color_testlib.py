"""Tiny generated inputs for the CoLoR-Filter tests: a fake Debian file tree
(info manual, man pages, changelogs, a dictd dictionary, fortunes) and
synthetic pool shards."""
from __future__ import annotations

import gzip
import os
import random

from data_pipelines.color_filter import pool_sources
from data_pipelines.curation import io as cio

WORDS = {
    "python": "def class import module object iterator generator lambda list dict tuple "
              "exception keyword argument attribute method function coroutine".split(),
    "man": "option flag file directory process signal terminal output input user "
           "command argument default exit status environment".split(),
    "clib": "pointer buffer errno descriptor struct size_t return value thread mutex "
            "socket memory allocation library header macro".split(),
    "changelog": "upload release fix bump standards version closes maintainer package "
                 "upstream debhelper patch urgency security".split(),
    "dict": "noun verb adjective adverb archaic obsolete sense usage plural synonym "
            "etymology derived latin greek".split(),
    "fortune": "love life wisdom fool money time heart friend truth dream laugh world "
               "happy wise night".split(),
}


def sentence(rng: random.Random, kind: str, n: int = 10) -> str:
  return " ".join(rng.choice(WORDS[kind]) for _ in range(n)).capitalize() + "."


def paragraph(rng: random.Random, kind: str, sentences: int = 5) -> str:
  return " ".join(sentence(rng, kind) for _ in range(sentences))


def _gz(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.GzipFile(path, "wb", mtime=0) as f:
    f.write(text.encode("utf-8"))


def _write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def make_fake_debian_root(root: str, units: int = 6, seed: int = 0) -> None:
  """A file tree with every domain's formats, `units` sources (or entries) each."""
  rng = random.Random(seed)
  nodes = ["\x1f\nFile: python3.11.info,  Node: Top,  Next: Intro,  Up: (dir)\n\nPython\n******\n\n"
           "* Menu:\n\n* Intro::\n* Details: Details.\n\n"]
  for i in range(units):
    nodes.append(f"\x1f\nFile: python3.11.info,  Node: N{i},  Next: N{i + 1},  Up: Top\n\n"
                 f"{i}.1 Section {i}\n============\n\n" + paragraph(rng, "python")
                 + "\n\nSee *note the list type: 42. for more.\n\n" + paragraph(rng, "python")
                 + "\n\n     >>> x = [1, 2]\n     >>> len(x)\n     2\n")
  nodes.append("\x1f\nTag Table:\nNode: Top\x7f123\n\x1f\nEnd Tag Table\n")
  _gz(os.path.join(root, "usr/share/info/python3.11.info.gz"), "This is python3.11.info.\n"
      + "".join(nodes))
  for sec, kind, sub in (("1", "man", "man1"), ("8", "man", "man8"), ("2", "clib", "man2"),
                         ("3", "clib", "man3")):
    for i in range(units // 2 + 1):
      page = (f'.\\" a comment\n.TH CMD{i} {sec} 2024-01-01 "fake"\n.SH NAME\ncmd{i} \\- '
              f"{sentence(rng, kind, 5)}\n.SH DESCRIPTION\n{paragraph(rng, kind)}\n.PP\n"
              f".B \\-\\-flag\n{paragraph(rng, kind)}\n.TP\n.BR open (2)\n"
              f"{sentence(rng, kind)}\n.nf\n    example line one\n    example line two\n.fi\n")
      _gz(os.path.join(root, f"usr/share/man/{sub}/cmd{i}.{sec}.gz"), page)
    _gz(os.path.join(root, f"usr/share/man/{sub}/alias.{sec}.gz"), f".so {sub}/cmd0.{sec}\n")
  _gz(os.path.join(root, "usr/share/man/man1/gcloud_x.1.gz"), ".TH G 1\n.SH NAME\ngcloud\n")
  for i in range(units):
    entries = []
    for v in range(3):
      entries.append(f"pkg{i} (1.{v}-1) unstable; urgency=medium\n\n  * "
                     + sentence(rng, "changelog") + "\n  * " + sentence(rng, "changelog")
                     + f"\n\n -- Someone <s@example.org>  Mon, 0{v + 1} Jan 2024 00:00:00 +0000\n")
    _gz(os.path.join(root, f"usr/share/doc/pkg{i}/changelog.Debian.gz"), "\n".join(entries))
  body, index = b"", []
  info = b"00-database-info\nThis is a fake dictionary.\n"
  index.append(("00-database-info", 0, len(info)))
  body += info
  for i in range(units * 8):
    entry = f"Word{i:03d} \\Word\"{i}\\, n.\n   {sentence(rng, 'dict', 14)}\n   [1913 Webster]\n"
    raw = entry.encode()
    index.append((f"word{i:03d}", len(body), len(raw)))
    body += raw
  os.makedirs(os.path.join(root, "usr/share/dictd"), exist_ok=True)
  with gzip.GzipFile(os.path.join(root, "usr/share/dictd/gcide.dict.dz"), "wb", mtime=0) as f:
    f.write(body)
  _write(os.path.join(root, "usr/share/dictd/gcide.index"), "".join(
      f"{w}\t{pool_sources.encode_b64_number(o)}\t{pool_sources.encode_b64_number(n)}\n"
      for w, o, n in index))
  for i in range(max(units // 3, 1)):
    fortunes = "\n%\n".join(sentence(rng, "fortune", 12) + "\n\t\t-- Anon" for _ in range(12))
    _write(os.path.join(root, f"usr/share/games/fortunes/set{i}"), fortunes + "\n%\n")
    _write(os.path.join(root, f"usr/share/games/fortunes/set{i}.dat"), "\x00binary")


DOMAINS = ("python", "man-commands", "man-c-api", "debian-changelog", "dictionary", "fortunes")
KIND = {"python": "python", "man-commands": "man", "man-c-api": "clib",
        "debian-changelog": "changelog", "dictionary": "dict", "fortunes": "fortune"}


def synthetic_rows(n: int, seed: int = 0, domains=DOMAINS) -> list[dict]:
  """n pool rows (id, text, domain, source, url) of mixed domains."""
  rng = random.Random(seed)
  rows = []
  for i in range(n):
    dom = domains[i % len(domains)]
    text = paragraph(rng, KIND[dom], rng.randint(1, 4))
    rows.append({"id": cio.doc_id("synthetic", seed, i), "text": text, "domain": dom,
                 "source": f"{dom}:synthetic", "url": ""})
  return rows


def write_shards(directory: str, rows: list[dict], num_shards: int) -> list[str]:
  """rows split round-robin into `num_shards` jsonl.zst shards under directory/output."""
  paths = []
  for s in range(num_shards):
    path = os.path.join(directory, "output", f"pool-{s:05d}-of-{num_shards:05d}.jsonl.zst")
    cio.write_jsonl_zst(path, rows[s::num_shards])
    paths.append(path)
  return paths
