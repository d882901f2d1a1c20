"""End to end on the offline WARC corpus of tools/make_test_warc.py: planted
duplicates found, malformed records counted, the Beam DirectRunner (2
workers) writes what the in-process runner writes, and a killed run resumes
to the same output without redoing finished shards."""
import glob
import io
import os
import subprocess
import sys
import tempfile
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
    cls.workdir = os.path.join(cls.tmp, "inprocess")
    buf = io.StringIO()
    with redirect_stdout(buf):
      cls.summary = pipeline.run(cls.cfg, cls.workdir, "inprocess")
    cls.printed = buf.getvalue()
    cls.attrs = _attrs(cls.workdir)
    cls.by_url = {a["url"]: a for a in cls.attrs if a["url"]}

  def test_malformed_records_counted_and_skipped(self):
    read = self.summary["stats"]["read"]["removed"]
    malformed = {k: v for k, v in read.items() if k.startswith("malformed:")}
    self.assertEqual(sum(malformed.values()), self.truth["malformed"] + self.truth["jsonl_malformed"])
    for kind in ("stream_error", "no_target_uri", "bad_block_digest", "bad_http_header", "empty_payload"):
      self.assertIn(f"malformed:{kind}", malformed)
    self.assertEqual(sum(v for k, v in read.items() if k.startswith("skipped:")), self.truth["skipped"])

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
    self.assertIn("docs/s", self.printed)
    saved = cio.read_json(os.path.join(self.workdir, "stats.json"))
    self.assertEqual(saved["docs_out"], len(rows))

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
           f"--workdir={workdir}", "--runner=inprocess"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 17, proc.stderr[-2000:])
    self.assertIn("[curate:filter] 1/3", proc.stderr)
    done = glob.glob(os.path.join(workdir, "filtered", "*.stats.json"))
    self.assertLen(done, 1)
    mtime = os.stat(done[0]).st_mtime_ns
    # Also lose a finished output shard's marker, as a kill during stage D would.
    with redirect_stdout(io.StringIO()):
      pipeline.run(self.cfg, workdir, "inprocess")
    self.assertEqual(os.stat(done[0]).st_mtime_ns, mtime)   # not redone
    os.remove(os.path.join(workdir, "output", "crawl-00001.stats.json"))
    with redirect_stdout(io.StringIO()):
      summary = pipeline.run(self.cfg, workdir, "inprocess")
    self.assertEqual(_files(workdir), _files(self.workdir))
    self.assertEqual(cstats.without_time(summary["stats"]), cstats.without_time(self.summary["stats"]))

  def test_workdir_refuses_other_config(self):
    cfg = test_corpus.get_config(self.corpus)
    cfg.heuristics.min_words = 10
    with self.assertRaisesRegex(ValueError, "different config"):
      pipeline.run(cfg, self.workdir, "inprocess", verbose=False)


if __name__ == "__main__":
  absltest.main()
