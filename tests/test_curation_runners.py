"""The curation package's layering (stages <- runners <- dispatcher, no import
cycle), the dispatcher's shared plan of what is done, runner-name checking,
the config schema and its start-up checks, and stage keys (a config change
redoes only the stages that read the changed field)."""
import ast
import glob
import io
import json
import os
import random
import tempfile
from contextlib import redirect_stderr
from contextlib import redirect_stdout
from unittest import mock

from absl.testing import absltest

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import io as cio
from data_pipelines.curation import pipeline
from data_pipelines.curation import stages
from data_pipelines.curation_configs import dclm_baseline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "data_pipelines"


def import_graph(package_dir: str = os.path.join(REPO, PACKAGE)) -> dict[str, set[str]]:
  """{module: modules of the package it imports}, counting imports inside
  functions too (a lazy import still closes a cycle)."""
  modules = {}
  for path in glob.glob(os.path.join(package_dir, "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    modules[rel.removesuffix(".__init__")] = path
  graph = {}
  for name, path in modules.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        deps |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        deps.add(node.module)
        deps |= {f"{node.module}.{a.name}" for a in node.names}
    graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")
                   and d != PACKAGE}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """One import cycle as [a, b, ..., a], or [] (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    state[node] = "done"
    stack.pop()
    return []

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return []


class LayeringTest(absltest.TestCase):

  def test_cycle_finder_finds_a_planted_cycle(self):
    self.assertEqual(find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
    self.assertEqual(find_cycle({"a": {"b"}, "b": set()}), [])

  def test_data_pipelines_has_no_import_cycle(self):
    graph = import_graph()
    self.assertIn("data_pipelines.curation.stages", graph["data_pipelines.curation.pipeline"])
    self.assertEqual(find_cycle(graph), [])

  def test_runners_import_only_the_stages(self):
    graph = import_graph()
    runners = ("data_pipelines.curation.inprocess", "data_pipelines.curation.beam_runner")
    dispatch = {"data_pipelines.curation.pipeline", *runners}
    for runner in runners:
      self.assertIn("data_pipelines.curation.stages", graph[runner])
      self.assertEmpty(graph[runner] & dispatch, runner)
    self.assertEmpty(graph["data_pipelines.curation.stages"] & dispatch)


def _tiny_config(corpus: str):
  c = config_lib.default_config()
  c.inputs = [{"name": "notes", "paths": [os.path.join(corpus, "*.jsonl")], "format": "jsonl"}]
  c.langid.enabled = False
  c.heuristics.enabled = False
  c.line_modifiers.enabled = False
  c.workers = 1
  return c


def _write_corpus(corpus: str) -> None:
  os.makedirs(corpus, exist_ok=True)
  for s in range(2):
    with open(os.path.join(corpus, f"part{s}.jsonl"), "w") as f:
      for i in range(5):
        f.write(json.dumps({"id": f"p{s}-{i}", "text": f"note {i} of part {s}: " +
                            " ".join(f"w{(i * 7 + j * s) % 50}" for j in range(30))}) + "\n")


def _run(cfg, workdir):
  with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
    return pipeline.run(cfg, workdir, "inprocess", verbose=False)


class DispatcherTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.corpus = self.create_tempdir().full_path
    _write_corpus(self.corpus)
    self.cfg = _tiny_config(self.corpus)

  def test_runner_error_names_every_accepted_runner(self):
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    with self.assertRaises(ValueError) as ctx:
      pipeline.run(self.cfg, workdir, "dataflow", verbose=False)
    for name in ("inprocess", "direct", "beam"):
      self.assertIn(name, str(ctx.exception))
    self.assertFalse(os.path.exists(workdir))   # refused before anything was written

  def test_plan_is_what_the_markers_say(self):
    workdir = self.create_tempdir().full_path
    ctx = stages.make_context(workdir, self.cfg)
    paths = ctx.paths
    self.assertEqual(ctx.shard_keys, ["notes-00000", "notes-00001"])
    todo = stages.plan(ctx)
    self.assertEqual([s.key for s in todo.filter], ["notes-00000", "notes-00001"])
    self.assertTrue(todo.dedup)
    self.assertFalse(todo.quality)   # quality disabled in this config
    self.assertEqual(todo.write, ["notes-00000", "notes-00001"])
    summary = _run(self.cfg, workdir)
    self.assertEqual(summary["docs_out"], 10)
    self.assertTrue(stages.plan(ctx).empty)
    os.remove(paths.shard_file(paths.output, "notes-00001", "stats"))
    todo = stages.plan(ctx)
    self.assertEqual((todo.filter, todo.dedup, todo.write), ([], False, ["notes-00001"]))
    with open(paths.shard_file(paths.output, "notes-00000", "docs"), "rb") as f:
      kept = f.read()
    again = _run(self.cfg, workdir)
    self.assertEqual(again["docs_out"], 10)
    with open(paths.shard_file(paths.output, "notes-00000", "docs"), "rb") as f:
      self.assertEqual(f.read(), kept)
    self.assertLen(list(cio.read_rows(paths.shard_file(paths.output, "notes-00001", "docs"))), 5)
    # A key file that holds another key (a stage done under another config) is not "done".
    cio.write_text(paths.shard_file(paths.filtered, "notes-00000", "key"), "stale\n")
    self.assertEqual([s.key for s in stages.plan(ctx).filter], ["notes-00000"])


  def test_empty_input_file_is_counted_and_named(self):
    empty = os.path.join(self.corpus, "part2.jsonl")
    open(empty, "w").close()
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
      summary = pipeline.run(self.cfg, self.create_tempdir().full_path, "inprocess", verbose=False)
    self.assertEqual(summary["shards"], 3)
    self.assertEqual(summary["empty_inputs"], [empty])
    self.assertEqual(summary["stats"]["files"]["in"], 3)
    self.assertEqual(summary["stats"]["files"]["removed"], {"empty": 1})
    self.assertIn(f"empty input file (no records): {empty}", err.getvalue())


class ConfigTest(absltest.TestCase):

  def test_no_dead_workdir_field(self):
    # The work directory is pipeline.run's argument; a config field that
    # nothing reads would silently ignore --config.workdir=...
    self.assertNotIn("workdir", config_lib.default_config())

  def test_no_list_fields_the_command_line_cannot_set(self):
    # config_flags cannot override lists; every list a user sets per run is a
    # comma-separated string. (inputs and boilerplate are for config files.)
    lists = []

    def walk(d, prefix):
      for k, v in d.items():
        if isinstance(v, dict):
          walk(v, f"{prefix}{k}.")
        elif isinstance(v, list):
          lists.append(prefix + k)
    walk(config_lib.default_config().to_dict(), "")
    self.assertEqual(sorted(lists), ["inputs", "line_modifiers.boilerplate"])
    self.assertEqual(config_lib.split_list(" a/*.warc.gz, b.jsonl ,,"), ["a/*.warc.gz", "b.jsonl"])
    self.assertEqual(config_lib.split_list(["x", "y"]), ["x", "y"])

  def test_format_from_file_name(self):
    for name, fmt in (("a.warc.gz", "warc"), ("A.WARC", "warc"), ("b.warc.zst", "warc"),
                      ("c.jsonl", "jsonl"), ("c.jsonl.zst", "jsonl"), ("c.json.gz", "jsonl"),
                      ("d.txt", "text"), ("e.parquet", "")):
      self.assertEqual(config_lib.format_of(name), fmt, name)

  def test_checks_name_the_field(self):
    d = self.create_tempdir().full_path
    _write_corpus(d)
    ok = config_lib.default_config()
    ok.input_paths = os.path.join(d, "*.jsonl")
    config_lib.check(ok)
    part0 = os.path.join(d, "part0.jsonl")
    cases = [
        ("input_paths", "", r"config\.input_paths is empty"),
        ("input_paths", ok.input_paths + ",/nope/*.warc.gz",
         r"config\.input_paths: '/nope/\*\.warc\.gz' matches no file"),
        ("input_source", "a b", r"config\.input_source='a b'"),
        ("workers", -1, r"config\.workers=-1"),
        ("langid.keep", "", r"config\.langid\.keep is empty"),
        ("langid.model", "/nope.npz", r"config\.langid\.model='/nope\.npz': file not found"),
        ("quality.enabled", True, r"config\.quality\.positive is empty.*quality\.model"),
        ("quality.positive", part0, r"config\.quality\.negative is empty"),
        ("quality.negative", "/nope/*.jsonl", r"config\.quality\.negative: '/nope/\*\.jsonl' matches no file"),
        ("quality.model", "/nope.bin", r"config\.quality\.model='/nope\.bin'"),
    ]
    c = config_lib.default_config()
    c.input_paths = ok.input_paths
    for field, value, pattern in cases:   # each case adds to the ones before
      good = c.copy_and_resolve_references()
      c.update_from_flattened_dict({field: value})
      with self.assertRaisesRegex(config_lib.ConfigError, pattern, msg=field):
        config_lib.check(c)
      if field.startswith("input") or field in ("workers", "langid.keep", "langid.model"):
        c = good   # undo: later cases need a valid rest
    bad = config_lib.default_config()
    bad.input_paths = os.path.join(d, "part0.jsonl")
    with open(os.path.join(d, "notes.parquet"), "w") as f:
      f.write("x")
    bad.input_paths += "," + os.path.join(d, "*.parquet")
    with self.assertRaisesRegex(config_lib.ConfigError, r"cannot tell the format of .*notes\.parquet"):
      config_lib.check(bad)

  def test_dclm_baseline_without_training_data_fails_at_start(self):
    d = self.create_tempdir().full_path
    _write_corpus(d)
    cfg = dclm_baseline.get_config()
    cfg.input_paths = os.path.join(d, "*.jsonl")
    workdir = os.path.join(self.create_tempdir().full_path, "w")
    with mock.patch.object(stages, "filter_shard", side_effect=AssertionError("work started")):
      with self.assertRaisesRegex(config_lib.ConfigError, r"config\.quality\.positive is empty"):
        pipeline.run(cfg, workdir, verbose=False)
    self.assertFalse(os.path.exists(workdir))   # refused before anything was written
    cfg = dclm_baseline.get_config("no_quality")
    cfg.input_paths = os.path.join(d, "*.jsonl")
    cfg.workers = 1
    self.assertEqual(_run(cfg, workdir)["shards"], 2)

  def test_refuses_a_non_empty_directory_that_is_no_curation_run(self):
    d = self.create_tempdir().full_path
    _write_corpus(d)
    with self.assertRaisesRegex(ValueError, r"not empty and holds no curation run"):
      _run(_tiny_config(d), d)   # the corpus directory itself


class StageKeyTest(absltest.TestCase):
  """A finished stage is redone only when a config field it reads (or a stage
  before it) changed, and the result equals a fresh run of the new config."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.corpus = tempfile.mkdtemp(prefix="curation_keys_")
    _write_corpus(cls.corpus)
    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    for name, n in (("pos.jsonl", 40), ("neg.jsonl", 40)):
      os.makedirs(os.path.join(cls.corpus, "quality"), exist_ok=True)
      with open(os.path.join(cls.corpus, "quality", name), "w") as f:
        for _ in range(n):
          text = " ".join(rng.choice(words[:5] if name == "pos.jsonl" else words[5:]) for _ in range(30))
          f.write(json.dumps({"text": text}) + "\n")

  def _cfg(self, **quality):
    c = _tiny_config(self.corpus)
    c.quality.update(dict(enabled=True, positive=os.path.join(self.corpus, "quality", "pos.jsonl"),
                          negative=os.path.join(self.corpus, "quality", "neg.jsonl"), dim=2, epoch=2))
    c.quality.update(quality)
    return c

  def _markers(self, workdir):
    """mtime of every key file (a stage that ran rewrote its key)."""
    return {os.path.relpath(p, workdir): os.stat(p).st_mtime_ns
            for p in glob.glob(os.path.join(workdir, "*", "*key"))}

  def test_changed_field_redoes_only_the_stages_that_read_it(self):
    workdir = self.create_tempdir().full_path
    first = _run(self._cfg(threshold=0.0), workdir)
    self.assertEqual(first["redone"]["filter"], ["notes-00000", "notes-00001"])
    before = self._markers(workdir)
    self.assertLen(before, 7)   # 2 filtered, dedup, quality model + scores, 2 output

    # A quality field: quality and write again; filter, dedup and the model not.
    second = _run(self._cfg(threshold=0.6), workdir)
    self.assertEqual(second["redone"], {"filter": [], "dedup": False, "quality": True,
                                        "write": ["notes-00000", "notes-00001"]})
    after = self._markers(workdir)
    for name in ("filtered/notes-00000.key", "filtered/notes-00001.key", "dedup/key",
                 "quality/model.key"):
      self.assertEqual(after[name], before[name], name)
    for name in ("quality/key", "output/notes-00000.key", "output/notes-00001.key"):
      self.assertNotEqual(after[name], before[name], name)
    self.assertLess(second["docs_out"], first["docs_out"])
    fresh = self.create_tempdir().full_path
    _run(self._cfg(threshold=0.6), fresh)
    for rel in ("output/notes-00000.jsonl.zst", "output/notes-00001.jsonl.zst",
                "quality/scores.jsonl.zst"):
      with open(os.path.join(workdir, rel), "rb") as a, open(os.path.join(fresh, rel), "rb") as b:
        self.assertEqual(a.read(), b.read(), rel)

    # Same config again: nothing to do. A write-only field: write only.
    self.assertEqual(_run(self._cfg(threshold=0.6), workdir)["redone"],
                     {"filter": [], "dedup": False, "quality": False, "write": []})
    c = self._cfg(threshold=0.6)
    c.output.attributes = False
    self.assertEqual(_run(c, workdir)["redone"],
                     {"filter": [], "dedup": False, "quality": False,
                      "write": ["notes-00000", "notes-00001"]})
    # The number of workers is read by no stage.
    c.workers = 2
    self.assertFalse(any(_run(c, workdir)["redone"].values()))
    # A dedup field: dedup and everything after it; a model field retrains.
    c.dedup.minhash.threshold = 0.7
    c.quality.epoch = 3
    third = _run(c, workdir)
    self.assertEqual(third["redone"], {"filter": [], "dedup": True, "quality": True,
                                       "write": ["notes-00000", "notes-00001"]})
    self.assertNotEqual(self._markers(workdir)["quality/model.key"], before["quality/model.key"])
    # A filter field: everything.
    c.modifiers.remove_urls = False
    self.assertEqual(_run(c, workdir)["redone"]["filter"], ["notes-00000", "notes-00001"])

  def test_stages_see_only_the_fields_they_read(self):
    ctx = stages.make_context(self.create_tempdir().full_path, self._cfg())
    self.assertEqual(sorted(ctx.cfg("dedup")), ["dedup", "output"])
    self.assertEqual(sorted(ctx.cfg("dedup").output), ["zstd_level"])
    with self.assertRaises(AttributeError):
      _ = ctx.cfg("filter").quality
    with self.assertRaises(AttributeError):
      _ = ctx.cfg("write").quality.threshold
    for stage, fields in stages.STAGE_FIELDS.items():   # every field named exists
      self.assertNotEmpty(stages.stage_view(config_lib.default_config(), stage), stage)
      del fields

  def test_inputs_the_config_no_longer_has_are_removed(self):
    workdir = self.create_tempdir().full_path
    _run(self._cfg(enabled=False), workdir)
    self.assertLen(pipeline.output_files(workdir), 2)
    c = self._cfg(enabled=False)
    c.inputs = [{"name": "notes", "paths": [os.path.join(self.corpus, "part1.jsonl")], "format": "jsonl"}]
    summary = _run(c, workdir)
    self.assertLen(pipeline.output_files(workdir), 1)
    self.assertEqual(summary["docs_out"], 5)
    self.assertEmpty(glob.glob(os.path.join(workdir, "*", "notes-00001*")))


if __name__ == "__main__":
  absltest.main()
