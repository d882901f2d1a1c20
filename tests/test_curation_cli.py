"""The curation CLI as a new user meets it: inputs and training files set on
the command line (comma-separated globs), a config that cannot run fails at
start with one line naming the field, empty input files are reported by name;
and the progress line (docs/s, ETA inside a shard)."""
import io
import json
import os
import subprocess
import sys

from absl.testing import absltest

from data_pipelines.curation import io as cio
from data_pipelines.curation import stats as cstats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "data_pipelines", "curation_configs")
HTML = ("<html><body><main><article><h1>Notes {i}</h1><p>This is the body of page number {i}, "
        "with enough words in it to be a real paragraph of text about the weather and the town "
        "library {i}.</p></article></main></body></html>")


def _curate(*args, timeout=300):
  cmd = [sys.executable, "-m", "data_pipelines.curate", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


class CliTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data = absltest.get_default_test_tmpdir() + "/curation_cli_data"
    os.makedirs(os.path.join(cls.data, "crawl"), exist_ok=True)
    for s in range(2):
      with open(os.path.join(cls.data, "crawl", f"part{s}.warc.gz"), "wb") as f:
        for i in range(3):
          f.write(cio.gzip_member(cio.warc_response(f"https://town{s}.example/{i}",
                                                    HTML.format(i=10 * s + i).encode())))
    with open(os.path.join(cls.data, "notes.jsonl"), "w") as f:
      for i in range(4):
        f.write(json.dumps({"id": f"n{i}", "text": f"note {i}: " + "words of a note " * 5}) + "\n")
    open(os.path.join(cls.data, "empty.jsonl"), "w").close()
    for k in range(2):
      with open(os.path.join(cls.data, f"spam{k}.jsonl"), "w") as f:
        for i in range(10):
          f.write(json.dumps({"text": f"buy cheap {k} {i} deals now best price offer click here"}) + "\n")

  def test_inputs_from_the_command_line(self):
    workdir = self.create_tempdir().full_path + "/w"
    paths = ",".join([os.path.join(self.data, "crawl", "*.warc.gz"), os.path.join(self.data, "notes.jsonl"),
                      os.path.join(self.data, "empty.jsonl")])
    proc = _curate(f"--config={CONFIGS}/dclm_baseline.py:no_quality", f"--config.input_paths={paths}",
                   "--config.input_source=mine", "--config.heuristics.enabled=False",
                   "--config.line_modifiers.enabled=False", "--config.langid.keep=en,de",
                   "--config.workers=2", f"--workdir={workdir}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    summary = cio.read_json(os.path.join(workdir, "stats.json"))
    # 2 WARC files, empty.jsonl and notes.jsonl (sorted by path): 4 shards.
    self.assertEqual(summary["shards"], 4)
    self.assertEqual(summary["docs_in"], 2 * 3 + 4)
    self.assertEqual(summary["docs_out"], 2 * 3 + 4 - 3)   # the 4 notes are near duplicates: 1 survives
    self.assertEqual(summary["stats"]["files"]["removed"], {"empty": 1})
    empty = os.path.join(self.data, "empty.jsonl")
    self.assertEqual(summary["empty_inputs"], [empty])
    self.assertIn(f"empty input file (no records): {empty}", proc.stderr)
    self.assertIn(f"note: empty input file (no records): {empty}", proc.stdout)
    config = cio.read_json(os.path.join(workdir, "config.json"))
    self.assertEqual(config["langid"]["keep"], "en,de")
    rows = [r for p in sorted(os.listdir(os.path.join(workdir, "output")))
            if p.startswith("mine-") and p.endswith(".jsonl.zst") and ".attrs" not in p
            for r in cio.read_rows(os.path.join(workdir, "output", p))]
    self.assertLen(rows, summary["docs_out"])
    self.assertEqual({r["source"] for r in rows}, {"mine"})
    self.assertIn("workers=2", proc.stdout)

  def test_quality_training_files_from_the_command_line(self):
    workdir = self.create_tempdir().full_path
    neg = os.path.join(self.data, "spam*.jsonl")   # a glob: both spam files
    proc = _curate(f"--config={CONFIGS}/dclm_baseline.py",
                   f"--config.input_paths={os.path.join(self.data, 'crawl', '*.warc.gz')}",
                   f"--config.quality.positive={os.path.join(self.data, 'notes.jsonl')}",
                   f"--config.quality.negative={neg},{os.path.join(self.data, 'empty.jsonl')}",
                   "--config.quality.dim=2", "--config.quality.epoch=2", "--config.workers=1",
                   "--config.heuristics.enabled=False", f"--workdir={workdir}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    summary = cio.read_json(os.path.join(workdir, "stats.json"))
    self.assertIn("quality", summary["stats"])
    self.assertTrue(os.path.exists(os.path.join(workdir, "quality", "model.bin")))
    self.assertEqual(cio.read_json(os.path.join(workdir, "quality", "threshold.json"))["top_fraction"], 0.1)
    # A missing model file: one line naming the field, nothing run.
    proc = _curate(f"--config={CONFIGS}/dclm_baseline.py",
                   f"--config.input_paths={os.path.join(self.data, 'notes.jsonl')}",
                   "--config.quality.model=/nope/model.bin", f"--workdir={workdir}/other")
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    self.assertEqual(proc.stderr.strip().splitlines(),
                     ["curate: config error: config.quality.model='/nope/model.bin': file not found"])

  def test_dclm_baseline_without_training_data_fails_at_once(self):
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    proc = _curate(f"--config={CONFIGS}/dclm_baseline.py",
                   f"--config.input_paths={os.path.join(self.data, 'crawl', '*.warc.gz')}",
                   f"--workdir={workdir}", timeout=120)
    self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    self.assertLen(lines, 1, proc.stderr)   # one line, no traceback
    self.assertRegex(lines[0], r"^curate: config error: config\.quality\.positive is empty, but "
                     r"config\.quality\.enabled=True needs .*config\.quality\.model")
    self.assertFalse(os.path.exists(workdir))

  def test_killed_pool_run_resumes_to_the_same_bytes(self):
    paths = ",".join([os.path.join(self.data, "crawl", "*.warc.gz"), os.path.join(self.data, "notes.jsonl")])
    args = [f"--config={CONFIGS}/dclm_baseline.py:no_quality", f"--config.input_paths={paths}",
            "--config.heuristics.min_words=10", "--config.workers=2"]
    ref, killed = (self.create_tempdir().full_path for _ in range(2))
    self.assertEqual(_curate(*args, f"--workdir={ref}").returncode, 0)
    env = dict(os.environ, ARMILLARY_CURATE_CRASH_AFTER="filter:1")
    cmd = [sys.executable, "-m", "data_pipelines.curate", *args, f"--workdir={killed}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, 17, proc.stderr[-2000:])
    self.assertEmpty(os.listdir(os.path.join(killed, "output")) if os.path.isdir(os.path.join(killed, "output"))
                     else [])
    proc = _curate(*args, f"--workdir={killed}")
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    redone = cio.read_json(os.path.join(killed, "stats.json"))["redone"]["filter"]
    self.assertLess(len(redone), 3)   # the shard finished before the kill was kept
    names = sorted(n for n in os.listdir(os.path.join(ref, "output")) if n.endswith(".jsonl.zst"))
    self.assertLen(names, 6)
    for name in names:
      with open(os.path.join(ref, "output", name), "rb") as a, open(os.path.join(killed, "output", name), "rb") as b:
        self.assertEqual(a.read(), b.read(), name)

  def test_no_inputs_is_named(self):
    proc = _curate(f"--config={CONFIGS}/dclm_baseline.py:no_quality",
                   f"--workdir={self.create_tempdir().full_path}", timeout=120)
    self.assertEqual(proc.returncode, 2)
    self.assertIn("config error: config.input_paths is empty", proc.stderr)


class ProgressTest(absltest.TestCase):

  def test_rate_and_eta_move_inside_a_shard(self):
    now = [0.0]
    out = io.StringIO()
    p = cstats.Progress("filter", shards=2, total_bytes=4_000_000, every_s=2.0, stream=out,
                        clock=lambda: now[0])
    now[0] = 1.0
    p.update("a", docs=100, nbytes=1_000_000)   # first line: printed at once
    now[0] = 1.5
    p.update("a", docs=150, nbytes=1_500_000)   # within every_s: not printed
    now[0] = 4.0
    p.update("a", docs=400, nbytes=2_000_000)
    lines = out.getvalue().splitlines()
    self.assertEqual(lines, [
        "[curate:filter] 0/2 shards | 100 docs 100.0 docs/s | 1.00/4.00 MB 25% | 1s ETA 3s",
        "[curate:filter] 0/2 shards | 400 docs 100.0 docs/s | 2.00/4.00 MB 50% | 4s ETA 4s"])
    now[0] = 5.0
    p.shard_done("a", docs=500, nbytes=2_000_000)   # always printed
    now[0] = 7.0
    p.update("b", docs=100, nbytes=1_000_000)
    p.shard_done("b", docs=200, nbytes=2_000_000)
    lines = out.getvalue().splitlines()
    self.assertEqual(lines[2], "[curate:filter] 1/2 shards | 500 docs 100.0 docs/s | 2.00/4.00 MB 50% "
                     "| 5s ETA 5s")
    self.assertEqual(lines[-1], "[curate:filter] 2/2 shards | 700 docs 100.0 docs/s | 4.00/4.00 MB 100% "
                     "| 7s done")

  def test_table_says_what_its_rates_mean(self):
    st = cstats.new()
    cstats.record(st, "read", bytes_in=2_000_000, bytes_out=2_000_000, seconds=2.0, n=100)
    cstats.record(st, "read", removed="malformed:x", n=1)
    cstats.record(st, "read", changed="invalid_utf8_replaced", n=1)
    text = cstats.table(st, wall_seconds=4.0, workers=2)
    self.assertIn("docs/CPU-s", text.splitlines()[0])
    self.assertIn("per CPU-second", text)
    self.assertIn("  ~ invalid_utf8_replaced", text)
    self.assertRegex(text.splitlines()[2], r"^read\s+102\s+101\s+1\s+2\.000\s+2\.000\s+51\.0\s+1\.00$")
    self.assertTrue(text.endswith("end to end: 102 documents read in 4.00 s wall-clock (workers=2) "
                                  "= 25.5 docs/s (wall)"))


if __name__ == "__main__":
  absltest.main()
