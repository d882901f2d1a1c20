"""Readers and writers: WARC (with malformed records), JSONL(.gz/.zst), text;
atomic JSONL.zst shards; HTML main-content extraction."""
import gzip
import json
import os
import tempfile

from absl.testing import absltest
import zstandard

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import extract
from data_pipelines.curation import io as cio

HTML = (b"<html><head><title>t</title><script>var x = 1;</script></head><body>"
        b"<nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About</a></li></ul></nav>"
        b"<main><article><h1>Heading</h1><p>First paragraph of the article body text.</p>"
        b"<p>Second paragraph with more words in it.</p></article></main>"
        b"<footer>Copyright footer text</footer></body></html>")


class WarcTest(absltest.TestCase):

  def test_good_and_malformed_records(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "x.warc.gz")
    good = cio.gzip_member(cio.warc_response("https://a.example/1", HTML))
    bad_digest = cio.gzip_member(cio.warc_response("https://a.example/2", HTML).replace(b"First", b"Worst"))
    garbage = b"\x1f\x8b\x08\x00" + b"not deflate" * 10
    last = cio.gzip_member(cio.warc_response("https://a.example/3", HTML))
    with open(path, "wb") as f:
      f.write(good + bad_digest + garbage + last + good[:len(good) // 2])
    recs = list(cio.read_warc(path, "src"))
    kinds = [r.get("malformed", "ok") for r in recs]
    # The truncated last record fails its digest and is counted once.
    self.assertEqual(kinds, ["ok", "bad_block_digest", "stream_error", "ok", "bad_block_digest"])
    self.assertEqual(recs[0]["url"], "https://a.example/1")
    self.assertEqual(recs[0]["html"], HTML)
    self.assertEqual(recs[0]["source"], "src")
    self.assertEqual(recs[3]["url"], "https://a.example/3")

  def test_warc_truncated_records_are_marked(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "x.warc.gz")
    with open(path, "wb") as f:
      for i, extra in enumerate(([], ["WARC-Truncated: length"], ["WARC-Truncated: time"], [])):
        f.write(cio.gzip_member(cio.warc_response(f"https://a.example/{i}", HTML[:100 if extra else None],
                                                  extra_headers=extra)))
    recs = list(cio.read_warc(path, "src"))
    self.assertEqual([r.get("truncated") for r in recs], [None, "length", "time", None])
    self.assertNotIn("html", recs[1])
    self.assertRegex(recs[1]["where"], r"x\.warc\.gz @ byte \d+")
    self.assertEqual(recs[3]["html"], HTML)
    positions = [r["_pos"] for r in recs]   # offsets of the records in the file, for progress
    self.assertEqual(positions, sorted(positions))
    self.assertLess(positions[-1], os.path.getsize(path))

  def test_uncompressed_warc(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "x.warc")
    with open(path, "wb") as f:
      f.write(cio.warc_response("https://a.example/1", HTML) + cio.warc_response("https://a.example/2", HTML,
                                                                                  status="404 Not Found"))
    recs = list(cio.read_warc(path))
    self.assertEqual([r.get("skipped") for r in recs], [None, "http_status_404"])


class JsonlTextTest(absltest.TestCase):

  def test_jsonl_compressions_and_bad_lines(self):
    d = tempfile.mkdtemp()
    lines = [json.dumps({"id": "a", "text": "hello", "url": "u"}), "{broken",
             json.dumps({"text": 3}), json.dumps({"text": "x", "metadata": {"WARC-Target-URI": "w"}})]
    raw = ("\n".join(lines) + "\n").encode()
    for name, data in (("p.jsonl", raw), ("p.jsonl.gz", gzip.compress(raw)),
                       ("p.jsonl.zst", zstandard.ZstdCompressor().compress(raw))):
      path = os.path.join(d, name)
      with open(path, "wb") as f:
        f.write(data)
      recs = list(cio.read_jsonl(path, "s"))
      self.assertEqual([r.get("malformed", "ok")[:13] for r in recs], ["ok", "bad_json_line", "bad_json_line", "ok"])
      self.assertEqual((recs[0]["id"], recs[0]["url"], recs[0]["text"]), ("a", "u", "hello"))
      self.assertEqual(recs[3]["url"], "w")

  def test_jsonl_errors_name_file_and_line(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "p.jsonl.gz")
    lines = [b'{"text": "fine"}', b"", b'{"text": ', b'["a list"]', b'{"body": "no text field"}',
             b'{"text": 7}']
    with open(path, "wb") as f:
      f.write(gzip.compress(b"\n".join(lines) + b"\n"))
    recs = list(cio.read_jsonl(path, "s"))
    self.assertEqual([r.get("where") for r in recs],
                     [None, f"{path}:3", f"{path}:4", f"{path}:5", f"{path}:6"])
    self.assertEqual([r.get("malformed") for r in recs],
                     [None, "bad_json_line:JSONDecodeError", "bad_json_line:TypeError",
                      "bad_json_line:KeyError", "bad_json_line:TypeError"])
    self.assertIn("Expecting value", recs[1]["error"])
    self.assertEqual(recs[3]["error"], "no field 'text'")

  def test_invalid_utf8_is_replaced_not_dropped(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "p.jsonl")
    with open(path, "wb") as f:
      f.write(b'{"id": "a", "text": "caf\xe9 cr\xe8me"}\n'
              b'{"id": "b", "text": "fine \xc3\xa9"}\n'
              b'{"id": "c", "text": "lone \\udc80 surrogate"}\n')
    recs = list(cio.read_jsonl(path))
    self.assertEqual([r.get("malformed") for r in recs], [None, None, None])
    self.assertEqual(recs[0]["text"], "caf\ufffd cr\ufffdme")
    self.assertEqual([r.get("invalid_utf8", False) for r in recs], [True, False, True])
    self.assertEqual(recs[1]["text"], "fine \u00e9")
    self.assertEqual(recs[2]["text"], "lone \ufffd surrogate")
    out = os.path.join(d, "out.jsonl.zst")   # every text can be written back
    cio.write_jsonl_zst(out, recs)
    self.assertEqual([r["text"] for r in cio.read_rows(out)], [r["text"] for r in recs])

  def test_text_splits(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "t.txt")
    with open(path, "w") as f:
      f.write("one\ntwo\n\nthree")
    self.assertLen(list(cio.read_text(path, split="file")), 1)
    self.assertLen(list(cio.read_text(path, split="line")), 3)
    self.assertEqual([r["text"] for r in cio.read_text(path, split="paragraph")], ["one\ntwo", "three"])

  def test_writer_roundtrip_is_atomic(self):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "sub", "s.jsonl.zst")
    rows = [{"id": str(i), "text": f"doc {i} ü"} for i in range(100)]
    self.assertEqual(cio.write_jsonl_zst(path, rows), 100)
    self.assertEqual(list(cio.read_rows(path)), rows)
    self.assertEqual(os.listdir(os.path.dirname(path)), ["s.jsonl.zst"])   # no temporary left

    def failing():
      yield {"id": "x", "text": "y"}
      raise RuntimeError("killed")
    with self.assertRaises(RuntimeError):
      cio.write_jsonl_zst(path, failing())
    self.assertEqual(list(cio.read_rows(path)), rows)   # old shard intact


class ExtractTest(absltest.TestCase):

  def test_main_content(self):
    text = extract.html_to_text(HTML, config_lib.default_config().extract, "utf-8")
    self.assertIn("First paragraph of the article body text.", text)
    self.assertIn("Second paragraph", text)
    self.assertNotIn("var x", text)
    self.assertNotIn("Copyright footer", text)
    self.assertIsNone(extract.html_to_text(b"<html><body></body></html>",
                                           config_lib.default_config().extract))

  def test_charset_decoding(self):
    html = "<html><body><main><p>Grüße aus Köln, schöne Stadt am Rhein.</p></main></body></html>"
    text = extract.html_to_text(html.encode("latin-1"), config_lib.default_config().extract, "iso-8859-1")
    self.assertIn("Grüße aus Köln", text)


if __name__ == "__main__":
  absltest.main()
