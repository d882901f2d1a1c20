"""End to end on the offline WARC corpus of tools/make_test_warc.py: planted
duplicates found, malformed records counted (truncated, invalid UTF-8 and
bad JSON lines named by file and line), the in-process runner writes the same
bytes with 1 and 2 worker processes, the Beam DirectRunner (2 workers) writes
what the in-process runner writes, and a killed run resumes to the same
output without redoing finished shards."""
import glob
import io
import os
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr
from contextlib import redirect_stdout

from absl.testing import absltest

from data_pipelines.curation import io as cio
from data_pipelines.curation import pipeline
from data_pipelines.curation import stats as cstats
from data_pipelines.curation_configs import test_corpus
from tools import make_test_warc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _files(workdir):
  """Relative path -> bytes of every data file a run writes (not timings)."""
  out = {}
  for sub in ("filtered", "dedup", "quality", "output"):
    for p in sorted(glob.glob(os.path.join(workdir, sub, "*"))):
      if p.endswith((".jsonl.zst", ".bin")):
        with open(p, "rb") as f:
          out[os.path.relpath(p, workdir)] = f.read()
  return out


def _all_files(workdir):
  """Relative path -> bytes of every file a run writes but its timings (stats)."""
  out = {}
  for p in sorted(glob.glob(os.path.join(workdir, "*", "*"))):
    name = os.path.relpath(p, workdir)
    if not name.endswith(("stats.json", "threshold.json")):
      with open(p, "rb") as f:
        out[name] = f.read()
  return out


def _attrs(workdir):
  return [a for p in sorted(glob.glob(os.path.join(workdir, "output", "*.attrs.jsonl.zst")))
          for a in cio.read_rows(p)]


class CurationEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="curation_e2e_")
    cls.corpus = os.path.join(cls.tmp, "corpus")
    cls.truth = make_test_warc.build(cls.corpus)
    cls.cfg = test_corpus.get_config(cls.corpus)
    cls.cfg.workers = 2
    cls.workdir = os.path.join(cls.tmp, "inprocess")
    buf, err = io.StringIO(), io.StringIO()
    with redirect_stdout(buf), redirect_stderr(err):
      cls.summary = pipeline.run(cls.cfg, cls.workdir, "inprocess")
    cls.printed, cls.logged = buf.getvalue(), err.getvalue()
    cls.attrs = _attrs(cls.workdir)
    cls.by_url = {a["url"]: a for a in cls.attrs if a["url"]}

  def test_malformed_records_counted_and_skipped(self):
    read = self.summary["stats"]["read"]["removed"]
    malformed = {k: v for k, v in read.items() if k.startswith("malformed:")}
    self.assertEqual(sum(malformed.values()), self.truth["malformed"] + self.truth["jsonl_malformed"])
    for kind in ("stream_error", "no_target_uri", "bad_block_digest", "bad_http_header", "empty_payload"):
      self.assertIn(f"malformed:{kind}", malformed)
    self.assertEqual(sum(v for k, v in read.items() if k.startswith("skipped:")), self.truth["skipped"])
    self.assertEqual(read["truncated:length"], len(self.truth["truncated"]))
    for url in self.truth["truncated"]:
      self.assertStartsWith(self.by_url[url]["steps"]["read"], "truncated:length: ")

  def test_bad_lines_are_named_by_file_and_line(self):
    where = self.truth["jsonl_malformed_where"]   # .../docstrings.jsonl.zst:4
    self.assertIn(where, self.logged)
    bad = [a for a in self.attrs if a["steps"].get("read", "").startswith("malformed:bad_json_line")]
    self.assertLen(bad, 1)
    self.assertIn(where + ": ", bad[0]["steps"]["read"])
    self.assertIn("crawl-00000.warc.gz @ byte ", self.logged)   # WARC problems name file and offset

  def test_invalid_utf8_is_replaced_and_counted(self):
    self.assertEqual(self.summary["stats"]["read"]["changed"], {"invalid_utf8_replaced": 1})
    a, = [a for a in self.attrs if a["id"] in self.truth["invalid_utf8"]]
    self.assertEqual(a["steps"]["read"], "invalid_utf8_replaced")
    docs = [d for p in glob.glob(os.path.join(self.workdir, "filtered", "docstrings-*[0-9].jsonl.zst"))
            for d in cio.read_rows(p) if d["id"] in self.truth["invalid_utf8"]]
    self.assertLen(docs, 1)   # the document survives, the bad byte as U+FFFD
    self.assertIn("Caf\ufffd au lait.", docs[0]["text"])
    self.assertIn("invalid_utf8_replaced", self.printed)

  def test_filters_hit_planted_documents(self):
    steps = lambda url: self.by_url[url]["steps"]
    for url in self.truth["non_english"]:
      self.assertStartsWith(steps(url)["langid"], "not_en")
    for url in self.truth["banned"]:
      self.assertStartsWith(steps(url)["url_filter"], "url_")
    for url in self.truth["low_quality"]:
      self.assertIn("heuristics", steps(url))
      self.assertNotEqual(steps(url)["heuristics"], "keep")
    for url in self.truth["spam"]:
      self.assertStartsWith(steps(url)["quality"], "below_threshold")

  def test_exact_and_near_duplicates_precision_recall(self):
    for orig, dup in self.truth["exact_dups"]:
      self.assertStartsWith(self.by_url[dup]["steps"]["dedup"], "exact_dup")
      self.assertIn(self.by_url[orig]["steps"]["dedup"], ("keep", "paragraphs_removed"))
    id_to_url = {a["id"]: a["url"] for a in self.attrs}
    clusters = list(cio.read_rows(os.path.join(self.workdir, "dedup", "clusters.jsonl.zst")))
    predicted = {frozenset((id_to_url[c["survivor"]], id_to_url[m]))
                 for c in clusters for m in c["members"] if m != c["survivor"]}
    reached = lambda url: "dedup" in self.by_url[url]["steps"]
    planted = {frozenset((a, b)) for a, b, _ in self.truth["near_dups"] if reached(a) and reached(b)}
    self.assertGreaterEqual(len(planted), 4)
    recall = len(predicted & planted) / len(planted)
    precision = len(predicted & planted) / max(len(predicted), 1)
    print(f"near-dup precision {precision:.3f} recall {recall:.3f} "
          f"({len(predicted)} predicted, {len(planted)} planted pairs)")
    self.assertEqual(recall, 1.0)
    self.assertEqual(precision, 1.0)
    for c in clusters:   # survivor: first member in canonical order, kept
      self.assertIn(self.by_url[id_to_url[c["survivor"]]]["steps"]["dedup"], ("keep", "paragraphs_removed"))

  def test_outputs_and_stats(self):
    files = pipeline.output_files(self.workdir)
    self.assertLen(files, 3)
    rows = [r for p in files for r in cio.read_rows(p)]
    self.assertLen(rows, self.summary["docs_out"])
    self.assertGreater(len(rows), 10)
    for r in rows:
      self.assertEqual(sorted(r), ["id", "source", "text", "url"])
    self.assertEqual({r["source"] for r in rows}, {"crawl", "docstrings"})
    st = self.summary["stats"]
    for step, s in st.items():   # every document in a step is kept or removed by a named rule
      self.assertEqual(s["in"], s["out"] + sum(s["removed"].values()), step)
    self.assertEqual(st["write"]["out"], len(rows))
    self.assertIn("heuristics", self.printed)
    self.assertIn("docs/CPU-s", self.printed)
    self.assertIn("per CPU-second", self.printed)
    self.assertRegex(self.printed, r"end to end: \d+ documents read in [\d.]+ s wall-clock \(workers=2\) "
                     r"= [\d.]+ docs/s \(wall\)")
    self.assertEqual(st["files"], {"in": 3, "out": 3, "bytes_in": 0, "bytes_out": 0, "seconds": 0.0,
                                   "removed": {}, "changed": {}})
    # Progress inside a stage: docs/s and an ETA from the input bytes read.
    self.assertRegex(self.logged, r"\[curate:filter\] \d/3 shards \| \d+ docs [\d.]+ docs/s \| "
                     r"[\d.]+/[\d.]+ MB \d+% \| \d+s (ETA \d+s|done)")
    saved = cio.read_json(os.path.join(self.workdir, "stats.json"))
    self.assertEqual(saved["docs_out"], len(rows))

  def test_one_worker_writes_the_bytes_two_write(self):
    cfg = test_corpus.get_config(self.corpus)
    cfg.workers = 1
    workdir = os.path.join(self.tmp, "one_worker")
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
      summary = pipeline.run(cfg, workdir, "inprocess")
    self.assertEqual((summary["workers"], self.summary["workers"]), (1, 2))
    # Progress from inside the first shard, before any shard is done.
    self.assertRegex(err.getvalue().splitlines()[0], r"^\[curate:filter\] 0/3 shards \| 1 docs ")
    mine, ref = _all_files(workdir), _all_files(self.workdir)
    self.assertEqual(sorted(mine), sorted(ref))
    self.assertGreater(len(ref), 20)
    for name in ref:
      self.assertEqual(mine[name], ref[name], name)
    self.assertEqual(cstats.without_time(summary["stats"]), cstats.without_time(self.summary["stats"]))

  def test_beam_direct_runner_matches_inprocess(self):
    workdir = os.path.join(self.tmp, "beam")
    with redirect_stdout(io.StringIO()):
      summary = pipeline.run(self.cfg, workdir, "direct",
                             ["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    mine, ref = _files(workdir), _files(self.workdir)
    self.assertEqual(sorted(mine), sorted(ref))
    for name in ref:
      self.assertEqual(mine[name], ref[name], name)
    self.assertEqual(cstats.without_time(summary["stats"]), cstats.without_time(self.summary["stats"]))

  def test_killed_run_resumes_to_same_output(self):
    workdir = os.path.join(self.tmp, "killed")
    env = dict(os.environ, **{pipeline.CRASH_ENV: "filter:1"})
    cmd = [sys.executable, "-m", "data_pipelines.curate",
           f"--config={REPO}/data_pipelines/curation_configs/test_corpus.py:{self.corpus}",
           f"--workdir={workdir}", "--runner=inprocess", "--config.workers=1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 17, proc.stderr[-2000:])
    self.assertIn("[curate:filter] 1/3", proc.stderr)
    done = glob.glob(os.path.join(workdir, "filtered", "*.stats.json"))
    self.assertLen(done, 1)
    mtime = os.stat(done[0]).st_mtime_ns
    # Also lose a finished output shard's marker, as a kill during stage D would.
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
      pipeline.run(self.cfg, workdir, "inprocess")
    self.assertEqual(os.stat(done[0]).st_mtime_ns, mtime)   # not redone
    os.remove(os.path.join(workdir, "output", "crawl-00001.stats.json"))
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
      summary = pipeline.run(self.cfg, workdir, "inprocess")
    self.assertEqual(summary["redone"]["write"], ["crawl-00001"])
    self.assertEqual(_files(workdir), _files(self.workdir))
    self.assertEqual(cstats.without_time(summary["stats"]), cstats.without_time(self.summary["stats"]))



if __name__ == "__main__":
  absltest.main()
