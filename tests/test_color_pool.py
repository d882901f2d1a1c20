"""The CoLoR-Filter pool: readers of each offline text format, document
grouping, dedup and the deterministic pool / target / held-out split, and
the command-line tool, on a tiny generated Debian file tree."""
import gzip
import json
import os
import subprocess
import sys

from absl.testing import absltest

from data_pipelines.color_filter import pool_build
from data_pipelines.color_filter import pool_sources as ps
from data_pipelines.curation import io as cio
import color_testlib as tl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ReadersTest(absltest.TestCase):

  def test_roff_to_text_fills_lines_and_drops_requests(self):
    page = ('.\\" comment\n.TH OPEN 2\n.SH NAME\nopen \\- open a file\n.SH DESCRIPTION\n'
            "The\n.I pathname\nis opened.\n.PP\n.BR close (2)\nand \\fBread\\fR(2).\n"
            ".nf\nline one\n  line two\n.fi\n.TS\nallbox;\nl l.\nA\tB\n.TE\n")
    text = ps.roff_to_text(page)
    self.assertIn("NAME\n\nopen - open a file", text)
    self.assertIn("The pathname is opened.", text)
    self.assertIn("close(2) and read(2).", text)
    self.assertIn("line one\n  line two", text)   # no-fill kept as is
    self.assertIn("A  B", text)                     # table data, no format line
    self.assertNotIn("allbox", text)
    self.assertNotIn("comment", text)
    self.assertNotIn(".TH", text)
    self.assertIsNone(ps.roff_to_text(".so man2/open.2\n"))

  def test_info_nodes_drop_header_menu_and_underlines(self):
    text = ("preamble\n\x1f\nFile: x.info,  Node: Top,  Up: (dir)\n\nTitle\n*****\n\n"
            "* Menu:\n\n* A::\n* B: b.\n\nBody text with *note the list: 42. here, and *note\nsys.stdout: 775, so.\n"
            "\x1f\nTag Table:\nNode: Top\x7f1\n")
    nodes = list(ps.info_nodes(text))
    self.assertLen(nodes, 1)
    self.assertEqual(nodes[0][1], ["Title", "Body text with the list here, and sys.stdout, so."])

  def test_dictd_numbers_round_trip(self):
    for v in (0, 1, 63, 64, 4095, 123456789):
      self.assertEqual(ps.dictd_number(ps.encode_b64_number(v)), v)
    self.assertEqual(ps.dictd_number("Kj"), 10 * 64 + 35)   # gcide.index: 00-database-info
    with self.assertRaisesRegex(ValueError, "base-64"):
      ps.dictd_number("a-b")

  def test_group_paragraphs_bounds(self):
    paras = ["a" * 50, "b" * 60, "c" * 400, "d\n" * 300, "e" * 10]
    groups = ps.group_paragraphs(paras, min_chars=100, max_chars=300)
    self.assertTrue(all(len(g) <= 300 for g in groups))
    self.assertTrue(all(len(g) >= 50 for g in groups))
    self.assertEqual(groups[0], "a" * 50 + "\n\n" + "b" * 60)
    joined = "".join(groups).replace("\n", "")
    for ch in "abcd":   # nothing lost but the too-short tail
      self.assertEqual(joined.count(ch), sum(p.count(ch) for p in paras))
    with self.assertRaisesRegex(ValueError, "min_chars"):
      ps.group_paragraphs(paras, 0, 10)

  def test_every_domain_reads_from_the_fake_tree(self):
    root = self.create_tempdir().full_path
    tl.make_fake_debian_root(root)
    for domain in ps.DOMAINS:
      files = ps.domain_files(domain, root)
      self.assertNotEmpty(files, domain)
      docs = [d for p, s in files for d in ps.documents(ps.read_domain_file(domain, p, s), 200, 800)]
      self.assertNotEmpty(docs, domain)
      for d in docs:
        self.assertEqual(d["domain"], domain)
        self.assertLessEqual(len(d["text"]), 800)
        self.assertNotIn("\x1f", d["text"])
    names = [os.path.basename(p) for p, _ in ps.domain_files("man-commands", root)]
    self.assertNotIn("gcloud_x.1.gz", names)
    self.assertNotIn("set0.dat", [os.path.basename(p) for p, _ in ps.domain_files("fortunes", root)])
    changelog = next(ps.read_domain_file("debian-changelog", *ps.domain_files("debian-changelog",
                                                                               root)[0]))
    self.assertLen(changelog.paragraphs, 3)   # one per version entry
    self.assertTrue(changelog.paragraphs[0].startswith("pkg"))


class BuildPoolTest(absltest.TestCase):

  def _build(self, root, out, **kw):
    args = dict(target_domain="python", docs_per_domain=20, min_chars=200, max_chars=700,
                target_fraction=0.3, heldout_fraction=0.2, num_shards=3, log=lambda s: None)
    args.update(kw)
    return pool_build.build_pool({d: root for d in ps.DOMAINS}, out, **args)

  def test_split_is_disjoint_deterministic_and_byte_identical(self):
    root = self.create_tempdir().full_path
    tl.make_fake_debian_root(root, units=8)
    a, b = self.create_tempdir().full_path, self.create_tempdir().full_path
    ma, mb = self._build(root, a), self._build(root, b)
    self.assertEqual(ma["shards"], mb["shards"])   # same sha256 of every shard
    for name in ("pool.jsonl", "target.jsonl", "heldout.jsonl", "heldout_target.jsonl"):
      with open(os.path.join(a, name), "rb") as fa, open(os.path.join(b, name), "rb") as fb:
        self.assertEqual(fa.read(), fb.read(), name)
    splits = {s: pool_build.read_split(a, s) for s in pool_build.SPLITS}
    ids = {s: {r["id"] for r in rows} for s, rows in splits.items()}
    self.assertEmpty(ids["pool"] & ids["target"])
    self.assertEmpty(ids["pool"] & ids["heldout"])
    self.assertEmpty(ids["target"] & ids["heldout"])
    self.assertEqual({r["domain"] for r in splits["target"]}, {"python"})
    self.assertGreater(len({r["domain"] for r in splits["pool"]}), 3)
    for s, rows in splits.items():   # the split rule, recomputed independently
      for r in rows:
        u = int.from_bytes(__import__("hashlib").sha256(f"0|split|{r['id']}".encode()).digest()[:8],
                           "big") / 2.0 ** 64
        want = ("heldout" if u < 0.2 else "target" if r["domain"] == "python" and u < 0.5
                else "pool")
        self.assertEqual(s, want)
    for rows in splits.values():
      self.assertEqual([r["id"] for r in rows], sorted(r["id"] for r in rows))
    counts = ma["counts"]
    for dom in ps.DOMAINS:
      total = sum(counts[s].get(dom, 0) for s in pool_build.SPLITS)
      self.assertLessEqual(total, 20)
    with open(os.path.join(a, "heldout_target.jsonl"), encoding="utf-8") as f:
      self.assertEqual({json.loads(l)["domain"] for l in f}, {"python"})

  def test_exact_duplicates_are_dropped_across_domains(self):
    docs = [{"id": "b", "text": "Same  TEXT here", "domain": "x"},
            {"id": "a", "text": "same text\nhere", "domain": "y"},
            {"id": "c", "text": "other", "domain": "x"}]
    kept, dropped = pool_build.dedup_exact(docs)
    self.assertEqual([d["id"] for d in kept], ["a", "c"])
    self.assertEqual(dropped, 1)

  def test_bad_parameters_name_the_field(self):
    root = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, "target_domain='nope'"):
      self._build(root, root + "/o", target_domain="nope")
    with self.assertRaisesRegex(ValueError, "heldout_fraction"):
      self._build(root, root + "/o", heldout_fraction=0.9, target_fraction=0.3)
    empty = self.create_tempdir().full_path
    with self.assertRaisesRegex(ValueError, "no documents"):
      pool_build.build_pool({"python": empty}, empty + "/o", target_domain="python",
                            log=lambda s: None)

  def test_resolve_roots_unpacks_a_deb_from_the_apt_cache(self):
    if not os.path.exists("/usr/bin/dpkg-deb"):
      self.skipTest("dpkg-deb not installed")
    tree = self.create_tempdir().full_path
    tl.make_fake_debian_root(tree, units=2)
    pkg = self.create_tempdir().full_path
    os.makedirs(os.path.join(pkg, "DEBIAN"))
    with open(os.path.join(pkg, "DEBIAN", "control"), "w", encoding="utf-8") as f:
      f.write("Package: fortunes\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\n"
              "Description: test\n")
    os.makedirs(os.path.join(pkg, "usr/share/games"))
    os.rename(os.path.join(tree, "usr/share/games/fortunes"),
              os.path.join(pkg, "usr/share/games/fortunes"))
    cache = self.create_tempdir().full_path
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", pkg,
                    os.path.join(cache, "fortunes_1_all.deb")], check=True, capture_output=True)
    staging = self.create_tempdir().full_path
    roots, sources = pool_build.resolve_roots(["python", "fortunes", "dictionary"], tree, cache,
                                              staging)
    self.assertEqual(roots["python"], tree)
    self.assertEqual(sources["fortunes"], "fortunes_1_all.deb")
    self.assertNotEmpty(ps.domain_files("fortunes", roots["fortunes"]))


class ToolTest(absltest.TestCase):

  def test_command_line_builds_the_pool(self):
    root = self.create_tempdir().full_path
    tl.make_fake_debian_root(root, units=4)
    out = os.path.join(self.create_tempdir().full_path, "pool")
    proc = subprocess.run(
        [sys.executable, "-m", "tools.build_color_pool", f"--out={out}", f"--root={root}",
         f"--apt_cache={root}/none", "--docs_per_domain=10", "--min_chars=200",
         "--max_chars=700", "--num_shards=2"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn("pool written to", proc.stdout)
    self.assertLen(cio.output_shards(os.path.join(out, "pool")), 2)
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
      manifest = json.load(f)
    self.assertEqual(manifest["params"]["target_domain"], "python")
    self.assertEqual(set(manifest["sources"]), set(ps.DOMAINS))
    proc = subprocess.run([sys.executable, "-m", "tools.build_color_pool", f"--out={out}",
                           "--domains=python,bogus"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    self.assertNotEqual(proc.returncode, 0)
    self.assertIn("bogus", proc.stderr)


if __name__ == "__main__":
  absltest.main()
