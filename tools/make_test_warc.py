"""Builds a small, real, offline test corpus for the curation pipeline.

HTML comes from Python's own documentation: pydoc.HTMLDoc pages of stdlib
modules, the language reference topics of `pydoc_data.topics` rendered as
web pages (with site navigation and footer boilerplate around the content),
and HTML files under /usr/share/doc. Into two WARC files it plants

  * exact duplicates (the same page under another URL),
  * near duplicates (a page with ~1% of its words replaced, another
    navigation bar and an extra sentence),
  * non-English pages, pages on banned URLs, low-quality pages (short,
    repetitive, bullet lists, keyword spam),
  * malformed records: a corrupt gzip member, a record without a target URI,
    a bad block digest, a broken HTTP header, an empty payload, an HTTP 404,
    a non-HTML payload, a record marked `WARC-Truncated: length`, and a
    truncated last record (the file is cut).

It also writes a JSONL.zst source of module docstrings (one malformed line,
one line with invalid UTF-8), fastText training files (quality_pos.jsonl:
reference prose; quality_neg.jsonl: generated spam) and truth.json, which
lists every planted case by URL.

`--extra_shards=N` adds N more WARC shards (crawl-00002...) of `--extra_pages`
pages each: reference and library pages with 20% of their words replaced
(distinct documents, not near duplicates), for benchmarks.

  python -m tools.make_test_warc --out=/tmp/corpus
  python -m tools.make_test_warc --out=/tmp/big --extra_shards=8 --extra_pages=150
"""
from __future__ import annotations

import argparse
import glob
import html
import importlib
import json
import os
import pydoc
import random
import re
import warnings

from data_pipelines.curation import dedup
from data_pipelines.curation import io as cio

SMALL_MODULES = ("sched", "timeit", "cmd", "bisect", "colorsys", "fnmatch")
TOPICS = ("assignment", "async", "attribute-access", "binary", "calls", "class", "comparisons",
          "customization", "dict", "exceptions", "execmodel", "function", "identifiers", "import",
          "naming", "numeric-types", "objects", "raise", "sequence-types", "strings", "try",
          "typesmapping", "typesseq-mutable", "with")
EXACT_DUP_TOPICS = ("attribute-access", "customization", "strings")
NEAR_DUP_TOPICS = ("calls", "comparisons", "function", "import", "with")
# Topics kept out of the WARC: the quality classifier's positive examples.
TRAIN_TOPICS = ("bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "booleans",
                "break", "continue", "conversions", "debugger", "del", "dynamic-features",
                "else", "exprlists", "floating", "for", "formatstrings", "global", "if",
                "imaginary", "in", "integers", "lambda", "lists", "nonlocal", "numbers",
                "pass", "power", "return", "shifting", "slicings", "specialattrs", "specialnames",
                "string-methods", "truth", "types", "typesfunctions", "typesmethods",
                "typesmodules", "unary", "while", "yield")

_FALLBACK_FOREIGN = {
    "de": ("Die Stadtbibliothek bleibt wegen Renovierungsarbeiten bis Ende des Monats geschlossen. "
           "Bücher können jedoch weiterhin über den Briefkasten am Haupteingang zurückgegeben werden, "
           "und die Ausleihfristen werden automatisch verlängert. Wir bitten alle Leserinnen und Leser "
           "um Verständnis und freuen uns darauf, Sie bald in den neuen Räumen begrüßen zu dürfen."),
    "fr": ("La bibliothèque municipale restera fermée jusqu'à la fin du mois pour des travaux de "
           "rénovation. Les livres peuvent toutefois être rendus dans la boîte aux lettres de l'entrée "
           "principale, et les durées de prêt seront prolongées automatiquement. Nous remercions nos "
           "lecteurs de leur compréhension et nous réjouissons de les accueillir bientôt."),
    "es": ("La biblioteca municipal permanecerá cerrada hasta final de mes por obras de renovación. "
           "Sin embargo, los libros pueden devolverse en el buzón de la entrada principal y los plazos "
           "de préstamo se ampliarán automáticamente. Agradecemos a todos nuestros lectores su "
           "comprensión y esperamos darles pronto la bienvenida en las nuevas salas."),
}

_SPAM_WORDS = ("best cheap deals discount buy now online shop free shipping sale offer top quality "
               "price lowest guaranteed order today limited amazing hot new brand shoes watches bags "
               "replica outlet store clearance coupon code save big percent off exclusive").split()
_GLUE = "the and of to with that for you our your on is are at in".split()


def _nav(site: str, variant: int) -> str:
  items = ["Home", "Downloads", "Documentation", "Community", "Blog", "About", "Contact"]
  if variant:
    items = items[::-1] + ["Donate", "Jobs"]
  lis = "".join(f'<li><a href="/{i.lower()}">{i}</a></li>' for i in items)
  return (f'<header><div class="logo">{site}</div><nav class="menu"><ul>{lis}</ul></nav>'
          f'<form class="search"><input type="text" name="q"> Search</form></header>')


def _footer(site: str) -> str:
  return (f'<footer class="footer"><p>Copyright 2001-2024 {site} Foundation. All rights reserved.</p>'
          '<p><a href="/privacy">Privacy policy</a> | <a href="/terms">Terms of use</a> | '
          '<a href="/cookies">Cookie settings</a></p></footer>')


def _text_to_html(text: str) -> str:
  """Blank-line paragraphs -> <p>, indented blocks -> <pre>."""
  out = []
  for para in re.split(r"\n\s*\n", text.strip("\n")):
    if not para.strip():
      continue
    if all(l.startswith("   ") or not l.strip() for l in para.split("\n")):
      out.append(f"<pre>{html.escape(para)}</pre>")
    else:
      out.append(f"<p>{html.escape(' '.join(para.split()))}</p>")
  return "\n".join(out)


def page(title: str, body_html: str, site: str = "Python Docs", nav_variant: int = 0) -> bytes:
  return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
          f"<script>var tracking = 1;</script><style>body{{font-family:sans-serif}}</style></head><body>"
          f"{_nav(site, nav_variant)}<main><article><h1>{html.escape(title)}</h1>\n{body_html}\n"
          f"</article></main>{_footer(site)}</body></html>").encode("utf-8")


def topic_text(name: str) -> str:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  return topics.topics[name]


def module_page(name: str) -> bytes:
  mod = importlib.import_module(name)
  h = pydoc.HTMLDoc()
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return h.page(pydoc.describe(mod), h.document(mod, name)).encode("utf-8")


def perturb(text: str, rate: float, rng: random.Random) -> str:
  """Replaces a `rate` share of the words (in place, keeping line structure)."""
  vocab = "alpha beta gamma delta value object method result element member".split()
  out = []
  for line in text.split("\n"):
    words = line.split(" ")
    for i, w in enumerate(words):
      if w.isalpha() and rng.random() < rate:
        words[i] = rng.choice(vocab)
    out.append(" ".join(words))
  return "\n".join(out)


def spam_text(rng: random.Random, sentences: int) -> str:
  out = []
  for _ in range(sentences):
    n = rng.randint(8, 16)
    words = [rng.choice(_GLUE) if rng.random() < 0.35 else rng.choice(_SPAM_WORDS) for _ in range(n)]
    out.append(" ".join(words).capitalize() + rng.choice([".", "!", "."]))
  paras = [" ".join(out[i:i + 5]) for i in range(0, len(out), 5)]
  return "\n\n".join(paras)


def foreign_text(lang: str, locale_dir: str = "/usr/share/locale") -> str:
  """Sentences of a gettext catalogue's translations, else a built-in paragraph."""
  import gettext  # pylint: disable=g-import-not-at-top
  sentences = []
  for path in sorted(glob.glob(os.path.join(locale_dir, lang, "LC_MESSAGES", "*.mo")))[:6]:
    try:
      with open(path, "rb") as f:
        cat = gettext.GNUTranslations(f)._catalog  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
      continue
    for v in cat.values():
      if isinstance(v, str) and len(v.split()) >= 6 and "%" not in v and "{" not in v and "\n" not in v:
        sentences.append(v.strip())
  sentences = sorted(set(sentences))[:60]
  if len(sentences) < 20:
    return "\n\n".join([_FALLBACK_FOREIGN[lang]] * 1)
  return "\n\n".join(" ".join(sentences[i:i + 4]) for i in range(0, len(sentences), 4))


def jaccard(a: str, b: str, n: int = 5) -> float:
  sa, sb = set(dedup.shingles(a, n).tolist()), set(dedup.shingles(b, n).tolist())
  return len(sa & sb) / max(len(sa | sb), 1)


def build(out: str, seed: int = 0, extra_shards: int = 0, extra_pages: int = 150) -> dict:
  """Writes the corpus into `out`; returns the truth dict (also truth.json)."""
  rng = random.Random(seed)
  os.makedirs(out, exist_ok=True)
  truth = {"exact_dups": [], "near_dups": [], "malformed": 0, "malformed_kinds": [],
           "skipped": 0, "non_english": [], "banned": [], "low_quality": [], "spam": [],
           "warc_files": [], "jsonl_files": []}
  shard0, shard1 = [], []

  def rec(lst, url, body, **kw):
    lst.append(cio.gzip_member(cio.warc_response(url, body, **kw)))

  pages = {}
  for i, name in enumerate(TOPICS):
    url = f"https://docs.python.example/reference/{name}.html"
    pages[url] = (name, topic_text(name))
    rec(shard0 if i % 2 == 0 else shard1, url, page(name, _text_to_html(topic_text(name))))
  for name in SMALL_MODULES:
    rec(shard0, f"https://docs.python.example/library/{name}.html", module_page(name))
  docs = [p for p in sorted(glob.glob("/usr/share/doc/**/*.html", recursive=True)) if os.path.isfile(p)]
  for p in docs[:6]:
    with open(p, "rb") as f:
      rec(shard0, "https://debian.example/doc/" + os.path.relpath(p, "/usr/share/doc"), f.read())

  # Exact duplicates: identical HTML under a mirror URL, in the other shard.
  originals = [u for u in sorted(pages) if pages[u][0] in EXACT_DUP_TOPICS]
  for url in originals:
    name, text = pages[url]
    dup = url.replace("docs.python.example", "mirror.python.example")
    rec(shard1, dup, page(name, _text_to_html(text)))
    truth["exact_dups"].append([url, dup])
  # Near duplicates.
  for j, url in enumerate(u for u in sorted(pages) if pages[u][0] in NEAR_DUP_TOPICS):
    name, text = pages[url]
    changed = perturb(text, 0.01, rng) + "\n\nThis page was last updated by the mirror maintainers."
    dup = url.replace("docs.python.example", "python-docs-copy.example")
    rec(shard1 if j % 2 else shard0, dup,
        page(name + " (copy)", _text_to_html(changed), site="PyDocs Mirror", nav_variant=1))
    truth["near_dups"].append([url, dup, round(jaccard(text, changed), 4)])

  for lang in ("de", "fr", "es"):
    url = f"https://{lang}.news.example/bibliothek.html"
    rec(shard0, url, page(f"Nachrichten {lang}", _text_to_html(foreign_text(lang)), site="Nachrichten"))
    truth["non_english"].append(url)
  for url in ("https://www.spam-casino.example/python.html",
              "http://free-slots.example/casino/tutorial.html",
              "https://hot-webcam-chat.example/live/dating-python.html"):
    name = rng.choice(TOPICS)
    rec(shard1, url, page(name, _text_to_html(topic_text(name)[:3000])))
    truth["banned"].append(url)

  low = {
      "https://tiny.example/": "<p>Welcome. Click here to continue.</p>",
      "https://repeat.example/": "\n".join(["<p>buy cheap watches online buy cheap watches online</p>"] * 40),
      "https://bullets.example/": "<ul>" + "".join(f"<li>Product number {i} in the list of things to buy today</li>"
                                                 for i in range(60)) + "</ul>",
      "https://numbers.example/": "<pre>" + "\n".join(" ".join(str(rng.randint(0, 9999)) for _ in range(12))
                                                     for _ in range(40)) + "</pre>",
  }
  for url, body in low.items():
    rec(shard0, url, page("Offers", body))
    truth["low_quality"].append(url)
  for i in range(4):
    url = f"https://deals-{i}.shop.example/offers.html"
    rec(shard1, url, page("Deals", _text_to_html(spam_text(rng, 40))))
    truth["spam"].append(url)

  # Malformed and skipped records.
  shard0.insert(5, b"\x1f\x8b\x08\x00" + b"corrupt gzip member, not deflate data" * 4)
  truth["malformed_kinds"].append("stream_error")
  no_uri = cio.warc_response("https://x.example/no-uri", page("x", "<p>no uri</p>"))
  shard0.insert(9, cio.gzip_member(re.sub(rb"WARC-Target-URI: [^\r]*\r\n", b"", no_uri)))
  truth["malformed_kinds"].append("no_target_uri")
  bad_digest = cio.warc_response("https://x.example/bad-digest", page("x", "<p>digest</p>"))
  shard1.insert(2, cio.gzip_member(bad_digest.replace(b"<p>digest</p>", b"<p>DIGEST</p>")))
  truth["malformed_kinds"].append("bad_block_digest")
  rec(shard1, "https://x.example/empty", b"   ")
  truth["malformed_kinds"].append("empty_payload")
  bad_http = cio.warc_response("https://x.example/bad-http", b"<p>x</p>", digest=False)
  shard1.insert(4, cio.gzip_member(bad_http.replace(b"HTTP/1.1 200 OK", b"GARBAGE-STATUS!")))
  truth["malformed_kinds"].append("bad_http_header")
  rec(shard1, "https://x.example/missing", b"<html>not found</html>", status="404 Not Found")
  rec(shard1, "https://x.example/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
      content_type="image/png")
  truth["skipped"] = 2
  name = "exceptions"
  url = "https://docs.python.example/cut/exceptions.html"
  rec(shard0, url, page(name, _text_to_html(topic_text(name)))[:1500],
      extra_headers=["WARC-Truncated: length"])
  truth["truncated"] = [url]
  trunc = cio.gzip_member(cio.warc_response("https://x.example/truncated", page("t", "<p>cut</p>" * 50)))
  shard1.append(trunc[: len(trunc) // 2])
  truth["malformed_kinds"].append("bad_block_digest(truncated)")
  truth["malformed"] = len(truth["malformed_kinds"])

  extra_rng = random.Random(seed + 2)
  sources = [(t, topic_text(t)) for t in TOPICS + TRAIN_TOPICS]
  extra = []
  for j in range(extra_shards):
    records = []
    for k in range(extra_pages):
      name, text = sources[(j * extra_pages + k) % len(sources)]
      body = perturb(text, 0.2, extra_rng)
      records.append(cio.gzip_member(cio.warc_response(
          f"https://bench{j}.example/{k}/{name}.html", page(name, _text_to_html(body)))))
    extra.append(records)

  for i, records in enumerate([shard0, shard1] + extra):
    path = os.path.join(out, f"crawl-{i:05d}.warc.gz")
    with open(path, "wb") as f:
      f.write(b"".join(records))
    truth["warc_files"].append(path)

  # A JSONL.zst source: module docstrings as plain text (one malformed line).
  rows = []
  for name in ("json", "random", "statistics", "textwrap", "heapq", "difflib", "string",
               "calendar", "fractions", "pprint", "shlex", "glob"):
    doc = (importlib.import_module(name).__doc__ or "").strip()
    if doc:
      rows.append(json.dumps({"id": f"docstring/{name}", "text": doc,
                              "metadata": {"url": f"https://docs.python.example/docstring/{name}"}}))
  rows.insert(3, '{"id": "broken", "text": ')
  # Line 7: a docstring with bytes that are not UTF-8 (Latin-1 "é" = 0xe9).
  bad = json.dumps({"id": "docstring/latin1", "text": (importlib.import_module("csv").__doc__ or "").strip()
                    + " Caf\u00e9 au lait.",
                    "metadata": {"url": "https://docs.python.example/docstring/latin1"}},
                   ensure_ascii=False).encode().replace("\u00e9".encode(), b"\xe9")
  lines = [r.encode() for r in rows]
  lines.insert(6, bad)
  jpath = os.path.join(out, "docstrings.jsonl.zst")
  import zstandard  # pylint: disable=g-import-not-at-top
  with open(jpath, "wb") as f:
    f.write(zstandard.ZstdCompressor(level=3).compress(b"\n".join(lines) + b"\n"))
  truth["jsonl_files"].append(jpath)
  truth["jsonl_malformed"] = 1
  truth["jsonl_malformed_where"] = f"{jpath}:4"
  truth["invalid_utf8"] = ["docstring/latin1"]

  # Quality classifier training data.
  pos = [p for t in TRAIN_TOPICS for p in re.split(r"\n\s*\n", topic_text(t)) if len(p.split()) >= 20]
  neg_rng = random.Random(seed + 1)
  neg = [spam_text(neg_rng, 5) for _ in range(len(pos))]
  for name, texts in (("quality_pos.jsonl", pos), ("quality_neg.jsonl", neg)):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      for t in texts:
        f.write(json.dumps({"text": t}) + "\n")
  truth["quality_pos"] = os.path.join(out, "quality_pos.jsonl")
  truth["quality_neg"] = os.path.join(out, "quality_neg.jsonl")
  cio.write_json(os.path.join(out, "truth.json"), truth)
  return truth


def main(argv=None):
  ap = argparse.ArgumentParser(description="Builds the offline curation test corpus.")
  ap.add_argument("--out", required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--extra_shards", type=int, default=0, help="more WARC shards, for benchmarks")
  ap.add_argument("--extra_pages", type=int, default=150, help="pages per extra shard")
  args = ap.parse_args(argv)
  truth = build(args.out, args.seed, args.extra_shards, args.extra_pages)
  sizes = {os.path.basename(p): os.path.getsize(p) for p in truth["warc_files"] + truth["jsonl_files"]}
  print(json.dumps({"files": sizes, "exact_dups": len(truth["exact_dups"]),
                    "near_dups": truth["near_dups"], "malformed": truth["malformed"]}, indent=1))


if __name__ == "__main__":
  main()
