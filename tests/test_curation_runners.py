"""The curation package's layering (stages <- runners <- dispatcher, no import
cycle), the dispatcher's shared plan of what is done, runner-name checking
and the config schema."""
import ast
import glob
import io
import json
import os
from contextlib import redirect_stdout

from absl.testing import absltest

from data_pipelines.curation import config as config_lib
from data_pipelines.curation import io as cio
from data_pipelines.curation import pipeline
from data_pipelines.curation import stages

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
  return c


def _write_corpus(corpus: str) -> None:
  os.makedirs(corpus, exist_ok=True)
  for s in range(2):
    with open(os.path.join(corpus, f"part{s}.jsonl"), "w") as f:
      for i in range(5):
        f.write(json.dumps({"id": f"p{s}-{i}", "text": f"note {i} of part {s}: " +
                            " ".join(f"w{(i * 7 + j * s) % 50}" for j in range(30))}) + "\n")


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
    paths = stages.Paths(workdir)
    shards = stages.list_shards(self.cfg)
    self.assertEqual([s.key for s in shards], ["notes-00000", "notes-00001"])
    todo = stages.plan(paths, shards, self.cfg)
    self.assertEqual([s.key for s in todo.filter], ["notes-00000", "notes-00001"])
    self.assertTrue(todo.dedup)
    self.assertFalse(todo.quality)   # quality disabled in this config
    self.assertEqual(todo.write, ["notes-00000", "notes-00001"])
    with redirect_stdout(io.StringIO()):
      summary = pipeline.run(self.cfg, workdir, "inprocess", verbose=False)
    self.assertEqual(summary["docs_out"], 10)
    self.assertTrue(stages.plan(paths, shards, self.cfg).empty)
    os.remove(paths.shard_file(paths.output, "notes-00001", "stats"))
    todo = stages.plan(paths, shards, self.cfg)
    self.assertEqual((todo.filter, todo.dedup, todo.write), ([], False, ["notes-00001"]))
    with open(paths.shard_file(paths.output, "notes-00000", "docs"), "rb") as f:
      kept = f.read()
    with redirect_stdout(io.StringIO()):
      again = pipeline.run(self.cfg, workdir, "inprocess", verbose=False)
    self.assertEqual(again["docs_out"], 10)
    with open(paths.shard_file(paths.output, "notes-00000", "docs"), "rb") as f:
      self.assertEqual(f.read(), kept)
    self.assertLen(list(cio.read_rows(paths.shard_file(paths.output, "notes-00001", "docs"))), 5)


class ConfigTest(absltest.TestCase):

  def test_no_dead_workdir_field(self):
    # The work directory is pipeline.run's argument; a config field that
    # nothing reads would silently ignore --config.workdir=...
    self.assertNotIn("workdir", config_lib.default_config())

  def test_workdir_of_older_version_still_resumes(self):
    workdir = self.create_tempdir().full_path
    cfg_json = stages.config_to_json(config_lib.default_config())
    cio.write_json(os.path.join(workdir, "config.json"), {**json.loads(cfg_json), "workdir": ""})
    stages.check_workdir(stages.Paths(workdir), cfg_json)   # the retired, empty key is ignored
    cio.write_json(os.path.join(workdir, "config.json"), {**json.loads(cfg_json), "workdir": "/x"})
    with self.assertRaisesRegex(ValueError, "different config"):
      stages.check_workdir(stages.Paths(workdir), cfg_json)


if __name__ == "__main__":
  absltest.main()
