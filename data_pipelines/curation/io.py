"""Readers (WARC via fastwarc, JSONL / .gz / .zst, plain text) and writers
(sharded JSONL.zst, written atomically).

Readers yield plain dicts. A good record has `id`, `url`, `source` and either
`html` (bytes, from WARC) or `text`; a record that cannot be used has
`malformed` (a short reason), `truncated` (WARC-Truncated's reason) or
`skipped` instead, so a run counts it and goes on; `where` (file and line or
byte offset) and `error` say what went wrong. `_pos` is the position in the
file read so far (for progress); `invalid_utf8` marks text whose bad bytes
were replaced by U+FFFD.
"""
from __future__ import annotations

import base64
import glob
import gzip
import hashlib
import io
import json
import os
import re
import uuid
from typing import Any, Iterable, Iterator

import zstandard

_GZIP_MAGIC = b"\x1f\x8b\x08"
_SURROGATE = re.compile("[\ud800-\udfff]")
_WARC_MAGIC = b"WARC/1."


def doc_id(*parts: Any) -> str:
  """A stable id from the record's origin (source, file, position)."""
  return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------
# Compressed files.

def open_read(path: str) -> io.BufferedIOBase:
  """Binary reader; .gz and .zst are decompressed on the fly."""
  f = open(path, "rb")
  if path.endswith(".gz"):
    return gzip.GzipFile(fileobj=f)
  if path.endswith(".zst"):
    return zstandard.ZstdDecompressor().stream_reader(f, closefd=True)
  return f


def iter_lines(path: str) -> Iterator[bytes]:
  with open_read(path) as raw:
    yield from io.BufferedReader(raw) if path.endswith(".zst") else raw


def iter_lines_at(path: str) -> Iterator[tuple[bytes, int]]:
  """(line, bytes of the file read so far): the position in the file as
  stored (compressed, for .gz / .zst), for progress and ETA."""
  with open(path, "rb") as f:
    if path.endswith(".gz"):
      lines = gzip.GzipFile(fileobj=f)
    elif path.endswith(".zst"):
      lines = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f, closefd=False))
    else:
      lines = f
    for line in lines:
      yield line, f.tell()


def decode_utf8(data: bytes) -> tuple[str, bool]:
  """(text, True if the bytes were not valid UTF-8 and U+FFFD replaced the bad ones)."""
  try:
    return data.decode("utf-8"), False
  except UnicodeDecodeError:
    return data.decode("utf-8", errors="replace"), True


def _valid_text(text: str) -> tuple[str, bool]:
  """A str that encodes as UTF-8: lone surrogates (JSON escapes like
  \\udc80) become U+FFFD. (text, True if any was replaced)."""
  try:
    text.encode("utf-8")
    return text, False
  except UnicodeEncodeError:
    return _SURROGATE.sub("\ufffd", text), True


def read_jsonl(path: str, source: str = "", text_field: str = "text") -> Iterator[dict]:
  """Documents of a JSONL(.gz/.zst) file. A line that is not a JSON object
  with a string `text_field` yields a malformed record that names the file
  and line (`where` = "path:line", `error`); a line that is not valid UTF-8
  is decoded with U+FFFD for the bad bytes and marked `invalid_utf8`."""
  source = source or os.path.basename(path)
  for i, (line, pos) in enumerate(iter_lines_at(path)):
    if not line.strip():
      continue
    line, invalid = decode_utf8(line)
    try:
      row = json.loads(line)
      if not isinstance(row, dict):
        raise TypeError(f"a JSON {type(row).__name__}, not an object")
      if text_field not in row:
        raise KeyError(f"no field {text_field!r}")
      text = row[text_field]
      if not isinstance(text, str):
        raise TypeError(f"field {text_field!r} is a {type(text).__name__}, not a string")
    except (ValueError, KeyError, TypeError) as e:
      yield {"id": doc_id(source, path, i), "source": source, "_pos": pos,
             "malformed": f"bad_json_line:{type(e).__name__}", "where": f"{path}:{i + 1}",
             "error": str(e.args[0] if isinstance(e, KeyError) and e.args else e)[:200]}
      continue
    text, bad = _valid_text(text)
    meta = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
    url = row.get("url") or meta.get("url") or meta.get("WARC-Target-URI") or ""
    rec = {"id": str(row.get("id") or doc_id(source, path, i)), "url": _valid_text(str(url))[0],
           "source": _valid_text(str(row.get("source") or source))[0], "text": text, "_pos": pos}
    if invalid or bad:
      rec["invalid_utf8"] = True
    yield rec


def read_text(path: str, source: str = "", split: str = "file") -> Iterator[dict]:
  """Plain UTF-8 text: one document per file, per line, or per blank-line paragraph."""
  source = source or os.path.basename(path)
  with open_read(path) as f:
    text, invalid = decode_utf8(f.read())
  size = os.path.getsize(path)
  if split == "file":
    pieces = [text]
  elif split == "line":
    pieces = text.split("\n")
  elif split == "paragraph":
    pieces = text.split("\n\n")
  else:
    raise ValueError(f"text split {split!r} must be file, line or paragraph")
  for i, piece in enumerate(pieces):
    if piece.strip():
      rec = {"id": doc_id(source, path, i), "url": "", "source": source, "text": piece, "_pos": size}
      if invalid and "\ufffd" in piece:
        rec["invalid_utf8"] = True
      yield rec


def _warc_record(rec, source: str, path: str, pos: int) -> dict:
  """One fastwarc record -> document dict (html bytes) or malformed dict."""
  url = rec.headers.get("WARC-Target-URI") or ""
  rid = (rec.headers.get("WARC-Record-ID") or "").strip("<>").replace("urn:uuid:", "")
  base = {"id": rid or doc_id(source, path, pos), "url": url, "source": source}
  truncated = rec.headers.get("WARC-Truncated")
  if truncated is not None:   # length, time, disconnect, unspecified (WARC 1.1, 5.13)
    return {**base, "truncated": truncated.strip().lower() or "unspecified"}
  if rec.headers.get("WARC-Block-Digest") and not rec.verify_block_digest(consume=False):
    return {**base, "malformed": "bad_block_digest"}
  if not url:
    return {**base, "malformed": "no_target_uri"}
  if rec.headers.get("WARC-Type") == "response":
    try:
      rec.parse_http()
    except Exception:  # pylint: disable=broad-except
      return {**base, "malformed": "bad_http_header"}
    if rec.http_headers is None or rec.http_headers.status_code is None:
      return {**base, "malformed": "bad_http_header"}
    if rec.http_headers.status_code != 200:
      return {**base, "skipped": f"http_status_{rec.http_headers.status_code}"}
    ctype = (rec.http_content_type or "").lower()
    if ctype and "html" not in ctype:
      return {**base, "skipped": "not_html"}
  payload = rec.reader.read()
  if not payload.strip():
    return {**base, "malformed": "empty_payload"}
  charset = rec.http_charset if rec.headers.get("WARC-Type") == "response" else None
  return {**base, "html": payload, "charset": charset or ""}


def read_warc(path: str, source: str = "") -> Iterator[dict]:
  """Response/resource records of a WARC file (.warc, .warc.gz, .warc.zst).

  A broken compressed member or record header stops fastwarc; the reader then
  resynchronises at the next gzip member (or `WARC/1.` line) after the last
  good record, reports one `stream_error` record, and carries on.
  """
  from fastwarc.warc import ArchiveIterator, WarcRecordType  # pylint: disable=g-import-not-at-top
  source = source or os.path.basename(path)
  with open(path, "rb") as f:
    data = f.read()
  magic = _GZIP_MAGIC if data.startswith(_GZIP_MAGIC) else _WARC_MAGIC
  types = WarcRecordType.response | WarcRecordType.resource
  offset = 0
  after_error = False      # no record since the last error: the same broken region
  last_malformed = False   # a truncated last record fails its digest, then the stream
  while offset < len(data):
    stream = io.BytesIO(data)
    stream.seek(offset)
    last = None
    try:
      for rec in ArchiveIterator(stream, record_types=types, parse_http=False):
        last = offset + rec.stream_pos
        out = _warc_record(rec, source, path, last)
        after_error, last_malformed = False, "malformed" in out
        out["_pos"] = last
        if "malformed" in out or "truncated" in out:
          out["where"] = f"{path} @ byte {last}"
        yield out
      return
    except Exception:  # pylint: disable=broad-except
      nxt = data.find(magic, max(offset, last if last is not None else offset) + 1)
      if not (after_error or (last_malformed and nxt < 0)):
        yield {"id": doc_id(source, path, "err", offset), "source": source, "url": "",
               "malformed": "stream_error", "where": f"{path} @ byte {offset}", "_pos": offset}
      after_error = True
      if nxt < 0:
        return
      offset = nxt


def read_input(path: str, fmt: str, source: str, **kw) -> Iterator[dict]:
  if fmt == "warc":
    return read_warc(path, source)
  if fmt == "jsonl":
    return read_jsonl(path, source, kw.get("text_field") or "text")
  if fmt == "text":
    return read_text(path, source, kw.get("text_split") or "file")
  raise ValueError(f"input format {fmt!r} must be warc, jsonl or text")


# ----------------------------------------------------------------------------
# Writers.

def write_jsonl_zst(path: str, rows: Iterable[dict], level: int = 3) -> int:
  """Writes rows as zstd-compressed JSON lines via a temporary file and an atomic
  rename, so a killed run never leaves a partial shard under the real name.
  Returns the number of rows."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
  n = 0
  with open(tmp, "wb") as raw:
    with zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False) as w:
      for row in rows:
        w.write(json.dumps(row, ensure_ascii=False, sort_keys=True).encode() + b"\n")
        n += 1
  os.replace(tmp, path)
  return n


def write_text(path: str, text: str) -> None:
  """Atomic text write (temporary file + rename)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temporary file + rename)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def output_shards(workdir: str) -> list[str]:
  """The curated document shards of a curation run's work directory,
  `workdir/output/*.jsonl.zst` (attribute side files left out), sorted."""
  return sorted(p for p in glob.glob(os.path.join(workdir, "output", "*.jsonl.zst"))
                if not p.endswith(".attrs.jsonl.zst"))


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def read_rows(path: str) -> Iterator[dict]:
  """Rows of a JSONL(.zst/.gz) file written by this package (all well formed)."""
  for line in iter_lines(path):
    if line.strip():
      yield json.loads(line)


# ----------------------------------------------------------------------------
# WARC writing (used to build test corpora).

def warc_response(url: str, body: bytes, *, record_id: str = "", date: str = "2024-01-01T00:00:00Z",
                  content_type: str = "text/html; charset=utf-8", status: str = "200 OK",
                  digest: bool = True, extra_headers: Iterable[str] = ()) -> bytes:
  """One WARC/1.0 response record (uncompressed bytes) holding an HTTP response."""
  http = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
          f"Content-Length: {len(body)}\r\n\r\n").encode() + body
  rid = record_id or str(uuid.uuid5(uuid.NAMESPACE_URL, url))
  headers = ["WARC/1.0", "WARC-Type: response", f"WARC-Record-ID: <urn:uuid:{rid}>",
             f"WARC-Target-URI: {url}", f"WARC-Date: {date}",
             "Content-Type: application/http; msgtype=response", *extra_headers]
  if digest:
    headers.append("WARC-Block-Digest: sha1:" + base64.b32encode(hashlib.sha1(http).digest()).decode())
  headers.append(f"Content-Length: {len(http)}")
  return ("\r\n".join(headers) + "\r\n\r\n").encode() + http + b"\r\n\r\n"


def gzip_member(data: bytes) -> bytes:
  """A gzip member with a fixed mtime (reproducible bytes)."""
  return gzip.compress(data, mtime=0)
