"""Readers and writers: WARC (with malformed records), JSONL(.gz/.zst), text;
atomic JSONL.zst shards; HTML main-content extraction."""
import gzip
import json
import os
import tempfile

from absl.testing import absltest
import zstandard

from data_pipelines.curation import config as config_lib
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
