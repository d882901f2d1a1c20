"""Readers for the kinds of text a Debian machine has offline, one per domain.

  python            the Python manual in GNU info format (python3.X-doc):
                    one unit per info node.
  man-commands      manual pages of sections 1 and 8 (roff): one unit per page
                    (the Google Cloud SDK's ~16k generated `gcloud*` pages are
                    left out: they would be most of the domain).
  man-c-api         manual pages of sections 2 and 3 (system calls, C library).
  debian-changelog  /usr/share/doc/*/changelog.Debian.gz: one unit per file.
  dictionary        GCIDE (dict-gcide, dictd format): runs of consecutive entries.
  fortunes          fortune-mod's strfile text files: one unit per file.

Each reader yields `Unit(domain, source, index, paragraphs)`; `documents`
groups a unit's consecutive paragraphs into documents of `min_chars` ..
`max_chars` characters (a paragraph longer than `max_chars` is split at line
boundaries), so every document is contiguous text of one source. Ids are
`curation.io.doc_id(domain, source, unit, piece)`: stable across machines
for the same files. Decompression goes through the curation readers
(`curation.io.open_read`: .gz, .zst, plain).
"""
from __future__ import annotations

import glob
import gzip
import os
import re
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from data_pipelines.curation import io as cio

DOMAINS = ("python", "man-commands", "man-c-api", "debian-changelog", "dictionary", "fortunes")

_BLANKS = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_UNDERLINE = re.compile(r"^\s*([=\-.*#~_^])\1{3,}\s*$")


class Unit(NamedTuple):
  """A piece of one source (an info node, a man page, a file of fortunes)."""
  domain: str
  source: str          # path relative to the domain's root
  index: int           # position of the unit inside the source
  paragraphs: list[str]


def read_text_file(path: str) -> str:
  """The file's text, decompressed (.gz/.zst) by the curation reader; bad UTF-8
  bytes become U+FFFD."""
  with cio.open_read(path) as f:
    return cio.decode_utf8(f.read())[0]


def normalize(text: str) -> str:
  """Control characters dropped, trailing spaces stripped, runs of blank lines
  collapsed to one."""
  text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\t", "    "))
  text = "\n".join(line.rstrip() for line in text.split("\n"))
  return _BLANKS.sub("\n\n", text).strip()


def paragraphs_of(text: str) -> list[str]:
  return [p for p in (q.strip("\n") for q in normalize(text).split("\n\n")) if p.strip()]


def _split_long(paragraph: str, max_chars: int) -> list[str]:
  """Pieces of at most max_chars, cut at line ends (a longer line is cut hard)."""
  out, cur = [], ""
  for line in paragraph.split("\n"):
    while len(line) > max_chars:
      if cur:
        out.append(cur)
        cur = ""
      out.append(line[:max_chars])
      line = line[max_chars:]
    if cur and len(cur) + 1 + len(line) > max_chars:
      out.append(cur)
      cur = line
    else:
      cur = f"{cur}\n{line}" if cur else line
  if cur.strip():
    out.append(cur)
  return out


def group_paragraphs(paragraphs: Sequence[str], min_chars: int, max_chars: int,
                     min_keep: int = 0) -> list[str]:
  """Consecutive paragraphs joined (blank line between) until a group holds at
  least `min_chars`; no group exceeds `max_chars`. A last group shorter than
  `min_keep` (default min_chars / 2) is dropped."""
  if not 0 < min_chars <= max_chars:
    raise ValueError(f"need 0 < min_chars ({min_chars}) <= max_chars ({max_chars})")
  min_keep = min_chars // 2 if not min_keep else min_keep
  pieces = [q for p in paragraphs for q in _split_long(p, max_chars)]
  groups, cur = [], ""
  for p in pieces:
    if cur and len(cur) + 2 + len(p) > max_chars:
      groups.append(cur)
      cur = p
    else:
      cur = f"{cur}\n\n{p}" if cur else p
    if len(cur) >= min_chars:
      groups.append(cur)
      cur = ""
  if cur:
    groups.append(cur)
  return [g for g in groups if len(g) >= min_keep]


def documents(units: Iterable[Unit], min_chars: int, max_chars: int) -> Iterator[dict]:
  """Documents {id, text, domain, source, url} of the units, in order."""
  for u in units:
    for j, text in enumerate(group_paragraphs(u.paragraphs, min_chars, max_chars)):
      yield {"id": cio.doc_id(u.domain, u.source, u.index, j), "text": text,
             "domain": u.domain, "source": f"{u.domain}:{u.source}", "url": ""}


# ----------------------------------------------------------------------------
# GNU info (the Python manual).

_INFO_HEADER = re.compile(r"^File: [^,]+,\s+Node: ")
_MENU_ITEM = re.compile(r"^\* [^:]+::?.*$")
# `*note Label: node.` / `*note Label: node,` / `*note Label::` -> `Label` (`,` kept)
_NOTE = re.compile(r"\*[Nn]ote\s+([^:*]+?)(?:::|:\s*[^.,:]*?(?:\.|(,)))")


def info_nodes(text: str) -> Iterator[tuple[int, list[str]]]:
  """(node index, paragraphs) of an info file: the header line, menus, title
  underlines and the tag table are dropped; `*note X: 12.` becomes `X`
  (also across a line break)."""
  for i, node in enumerate(text.split("\x1f")):
    body = node.lstrip("\n")
    if not _INFO_HEADER.match(body):
      continue   # the preamble, the tag table, the local-variables trailer
    lines, in_menu = [], False
    for line in body.split("\n")[1:]:
      if line.startswith("* Menu:"):
        in_menu = True
        continue
      if in_menu:
        if not line.strip() or _MENU_ITEM.match(line):
          continue
        in_menu = False
      if _UNDERLINE.match(line):
        continue
      lines.append(line)
    paras = paragraphs_of(_NOTE.sub(r"\1\2", "\n".join(lines)))
    if paras:
      yield i, paras


def read_info(path: str, domain: str, source: str) -> Iterator[Unit]:
  for i, paras in info_nodes(read_text_file(path)):
    yield Unit(domain, source, i, paras)


# ----------------------------------------------------------------------------
# Manual pages (roff, man macros).

_ROFF_NAMED = {"em": "--", "en": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'",
               "cq": "'", "bu": "*", "co": "(c)", "rg": "(R)", "tm": "(TM)", "mu": "x",
               "de": "deg", "ti": "~", "ha": "^", "rs": "\\", "bv": "|", "or": "|", "hy": "-",
               "Fo": "<<", "Fc": ">>", "fo": "<", "fc": ">", "<=": "<=", ">=": ">=", "->": "->",
               "<-": "<-", "!=": "!=", "pl": "+", "mi": "-", "eq": "="}
_ROFF_ESCAPE = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[-+]?\d+|s\([-+]?\d+|\*(?:\[[^\]]*\]|\(..|.)|"
    r"\((..)|\[([^\]]*)\]|([-e&|^ %c0:~'`\".\\])|[kwhvlLxzo]'[^']*'|n(?:\[[^\]]*\]|\(..|.)|.)")
_FONT_MACROS = {"B", "I", "SM", "SB"}
_ALT_MACROS = {"BR", "RB", "BI", "IB", "IR", "RI"}
_BREAK_MACROS = {"PP", "P", "LP", "sp", "HP", "SH", "SS", "TP", "IP", "TQ", "Sh", "Ss", "Pp"}


def _roff_escape(m: re.Match) -> str:
  named, bracket, simple = m.group(1), m.group(2), m.group(3)
  if named is not None:
    return _ROFF_NAMED.get(named, "")
  if bracket is not None:
    return _ROFF_NAMED.get(bracket, "")
  if simple is not None:
    return {"-": "-", "e": "\\", " ": " ", "\\": "\\", "'": "'", "`": "`", "~": " ",
            "0": " ", '"': "", ".": "."}.get(simple, "")
  return ""


def roff_unescape(text: str) -> str:
  return _ROFF_ESCAPE.sub(_roff_escape, text)


def _macro_args(rest: str) -> list[str]:
  """Arguments of a macro line: blank-separated, "double quotes" group."""
  return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
          for a in re.findall(r'"[^"]*"?|\S+', rest)]


class _Filler:
  """Roff's fill mode, roughly: text lines join into one output line until a
  break; no-fill lines (.nf, .EX, tables) stay as they are."""

  def __init__(self):
    self.lines: list[str] = []
    self.cur: list[str] = []

  def text(self, line: str, fill: bool) -> None:
    if not fill:
      self.brk()
      self.lines.append(line)
    elif line.strip():
      self.cur.append(line.strip())
    else:
      self.para()

  def brk(self) -> None:
    if self.cur:
      self.lines.append(" ".join(self.cur))
      self.cur = []

  def para(self) -> None:
    self.brk()
    self.lines.append("")

  def result(self) -> str:
    self.brk()
    return "\n".join(self.lines)


def roff_to_text(source: str) -> str | None:
  """Plain text of a man(7) page, or None for a page that only includes
  another (`.so`). Requests it does not know are dropped; tables are kept as
  their data lines."""
  out = _Filler()
  lines = source.replace("\\\n", "").split("\n")
  in_table = table_format = in_macro_def = False
  fill = True
  for raw in lines:
    if raw.startswith(('.\\"', "'\\\"", '.\\#', '\\"')) or raw.strip() in (".", "'"):
      continue
    if in_macro_def:
      in_macro_def = not raw.startswith("..")
      continue
    if raw.startswith((".", "'")) and len(raw) > 1:
      parts = raw[1:].strip().split(None, 1)
      name = parts[0] if parts else ""
      rest = parts[1] if len(parts) > 1 else ""
      if name == "so":
        return None
      if name in ("de", "de1", "am", "ig"):
        in_macro_def = True
      elif name == "TS":
        in_table, table_format = True, True
        out.brk()
      elif name == "TE":
        in_table = False
      elif name in ("nf", "EX"):
        fill = False
        out.brk()
      elif name in ("fi", "EE"):
        fill = True
      elif name in ("SH", "SS", "Sh", "Ss"):
        out.para()
        out.text(roff_unescape(" ".join(_macro_args(rest))).strip(), False)
        out.para()
      elif name in _FONT_MACROS:
        out.text(roff_unescape(" ".join(_macro_args(rest))), fill)
      elif name in _ALT_MACROS:
        out.text(roff_unescape("".join(_macro_args(rest))), fill)
      elif name in ("IP", "TQ"):
        out.para()
        args = _macro_args(rest)
        if args:
          out.text(roff_unescape(args[0]), False)
      elif name == "TP":
        out.para()
      elif name in _BREAK_MACROS:
        out.para()
      elif name == "br":
        out.brk()
      # every other request (TH, ft, ad, na, hy, ds, nr, RS, RE, in, ...) carries no text
      continue
    if in_table:
      if table_format:   # options (`allbox;`) and format lines, the last ending in "."
        table_format = not raw.rstrip().endswith(".")
        continue
      raw = raw.replace("T{", "").replace("T}", "").replace("\t", "  ")
      if raw.strip():
        out.text(roff_unescape(raw), False)
      continue
    out.text(roff_unescape(raw), fill)
  return out.result()


def read_man_page(path: str, domain: str, source: str) -> Iterator[Unit]:
  text = roff_to_text(read_text_file(path))
  if text is not None:
    paras = paragraphs_of(text)
    if paras:
      yield Unit(domain, source, 0, paras)


# ----------------------------------------------------------------------------
# Debian changelogs, fortunes, GCIDE.

def read_changelog(path: str, domain: str, source: str) -> Iterator[Unit]:
  """One unit per file; each version's entry is one paragraph (its blank
  lines kept inside) so documents split between entries first."""
  text = normalize(read_text_file(path))
  entries = re.split(r"\n(?=\S+ \([^)]*\) [^;\n]*; urgency=)", text)
  paras = [e.strip() for e in entries if e.strip()]
  if paras:
    yield Unit(domain, source, 0, [p.replace("\n\n", "\n") for p in paras])


def read_fortunes(path: str, domain: str, source: str) -> Iterator[Unit]:
  """A strfile text file: fortunes separated by lines holding only `%`."""
  text = read_text_file(path)
  fortunes = [normalize(f) for f in re.split(r"^%\s*$", text, flags=re.M)]
  fortunes = [f.replace("\n\n", "\n") for f in fortunes if f.strip()]
  if fortunes:
    yield Unit(domain, source, 0, fortunes)


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def dictd_number(s: str) -> int:
  """dictd's index numbers: base 64, most significant digit first."""
  v = 0
  for c in s:
    if c not in _B64:
      raise ValueError(f"bad dictd base-64 number {s!r}")
    v = v * 64 + _B64[c]
  return v


def read_dictd(index_path: str, dict_path: str, domain: str, source: str,
               entries_per_unit: int = 64) -> Iterator[Unit]:
  """dictd `.index` (headword, offset, length) over a `.dict(.dz)` body (dictzip
  is gzip): entries in index order, `entries_per_unit` to a unit; the
  database's own `00-database-*` entries are skipped."""
  if dict_path.endswith(".dz"):   # dictzip: a gzip file with random-access chunks
    with gzip.open(dict_path, "rb") as f:
      body = f.read()
  else:
    with cio.open_read(dict_path) as f:
      body = f.read()
  seen, entries = set(), []
  for line in read_text_file(index_path).split("\n"):
    parts = line.split("\t")
    if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
      continue
    span = (dictd_number(parts[1]), dictd_number(parts[2]))
    if span in seen:
      continue
    seen.add(span)
    entries.append(normalize(cio.decode_utf8(body[span[0]:span[0] + span[1]])[0]).replace("\n\n", "\n"))
  for u in range(0, len(entries), entries_per_unit):
    chunk = [e for e in entries[u:u + entries_per_unit] if e.strip()]
    if chunk:
      yield Unit(domain, source, u // entries_per_unit, chunk)


# ----------------------------------------------------------------------------
# Where each domain's files are.

DomainReader = Callable[[str, str], Iterator[Unit]]   # (root, domain) -> units


def _files_under(root: str, patterns: Sequence[str]) -> list[str]:
  return sorted({p for pat in patterns for p in glob.glob(os.path.join(root, pat))
                 if os.path.isfile(p)})


def domain_files(domain: str, root: str) -> list[tuple[str, str]]:
  """(path, source name) of a domain's input files under `root` (a filesystem
  root: "/" or a directory Debian packages were extracted into)."""
  if domain == "python":
    files = _files_under(root, ["usr/share/info/python3*.info*"])
  elif domain == "man-commands":
    files = [p for p in _files_under(root, ["usr/share/man/man1/*", "usr/share/man/man8/*"])
             if not os.path.basename(p).startswith("gcloud")]
  elif domain == "man-c-api":
    files = _files_under(root, ["usr/share/man/man2/*", "usr/share/man/man3/*.3",
                                "usr/share/man/man3/*.3.gz", "usr/share/man/man3/*.3type.gz",
                                "usr/share/man/man3/*.3const.gz"])
  elif domain == "debian-changelog":
    files = _files_under(root, ["usr/share/doc/*/changelog.Debian.gz"])
  elif domain == "dictionary":
    files = _files_under(root, ["usr/share/dictd/gcide.index"])
  elif domain == "fortunes":
    files = [p for p in _files_under(root, ["usr/share/games/fortunes/*"])
             if not p.endswith((".dat", ".u8")) and "off" not in os.path.basename(p)]
  else:
    raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
  return [(p, os.path.relpath(p, root)) for p in files]


def read_domain_file(domain: str, path: str, source: str) -> Iterator[Unit]:
  if domain == "python":
    return read_info(path, domain, source)
  if domain in ("man-commands", "man-c-api"):
    return read_man_page(path, domain, source)
  if domain == "debian-changelog":
    return read_changelog(path, domain, source)
  if domain == "dictionary":
    body = path[:-len(".index")] + ".dict.dz"
    if not os.path.exists(body):
      body = path[:-len(".index")] + ".dict"
    return read_dictd(path, body, domain, source)
  if domain == "fortunes":
    return read_fortunes(path, domain, source)
  raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")


def file_order_key(source: str) -> str:
  """Files are read in the order of a hash of their name: a prefix of that
  order is a spread-out, reproducible sample of a large directory (man1)."""
  return cio.doc_id("file-order", source)


def encode_b64_number(v: int) -> str:
  """Inverse of `dictd_number` (for building test dictionaries)."""
  alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  digits = ""
  while True:
    digits = alphabet[v % 64] + digits
    v //= 64
    if not v:
      return digits

