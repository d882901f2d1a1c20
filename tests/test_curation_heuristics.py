"""Each DCLM/Gopher/RefinedWeb rule on hand-made documents on both sides of
its threshold, the line modifiers, URL ban lists and language id."""
from absl.testing import absltest
from absl.testing import parameterized

from data_pipelines.curation import curation_config as config_lib
from data_pipelines.curation import heuristics as h
from data_pipelines.curation import langid

C = config_lib.default_config()
HC = C.heuristics
LC = C.line_modifiers
STOP = frozenset(h.read_list(HC.stop_words))
# 10 distinct 4-letter words, all containing letters, two of them stop words.
BASE = "the cats have many warm beds with soft blue rugs"


def words_doc(n: int, word: str = "word") -> str:
  return " ".join(f"{word}{i % 7}" if word else "x" for i in range(n))


class DocumentRulesTest(parameterized.TestCase):

  def test_page_length_bounds(self):
    self.assertIsNotNone(h.page_length(" ".join(["alpha"] * 49), HC))
    self.assertIsNone(h.page_length(" ".join(["alpha"] * 50), HC))
    self.assertIsNone(h.page_length(" ".join(["alpha"] * 100_000), HC))
    self.assertIsNotNone(h.page_length(" ".join(["alpha"] * 100_001), HC))
    # Punctuation is not a word: 49 words with 60 stray marks is still too short.
    self.assertIsNotNone(h.page_length(" ".join(["alpha ."] * 49 + ["!"] * 11), HC))

  def test_mean_word_length(self):
    self.assertIsNotNone(h.mean_word_length("ab " * 10 + "abc", HC))      # mean 2.09 < 3
    self.assertIsNone(h.mean_word_length("abc " * 10, HC))                # exactly 3
    self.assertIsNone(h.mean_word_length("abcdefghij " * 10, HC))         # exactly 10
    self.assertIsNotNone(h.mean_word_length("abcdefghijk " * 10, HC))     # 11 > 10

  def test_symbol_ratio(self):
    # 100 words; 10 hashes -> ratio 0.1 (kept), 11 symbols -> 0.11 (removed).
    words = ["word"] * 100
    ok = " ".join(w + ("#" if i < 10 else "") for i, w in enumerate(words))
    self.assertIsNone(h.symbol_ratio(ok, HC))
    self.assertIsNotNone(h.symbol_ratio(ok + " ...", HC))        # 11 / 101 = 0.109
    self.assertIsNotNone(h.symbol_ratio(ok + " x\u2026", HC))    # the unicode ellipsis counts

  def test_bullet_lines(self):
    nine = "\n".join(["\u2022 item"] * 9 + ["plain line"])          # 0.9: kept
    self.assertIsNone(h.bullet_lines(nine, HC))
    all_bullets = "\n".join(["- item"] * 10)                         # 1.0: removed
    self.assertIsNotNone(h.bullet_lines(all_bullets, HC))

  def test_ellipsis_lines(self):
    three = "\n".join(["and then..."] * 3 + ["fine."] * 7)           # 0.3: kept
    self.assertIsNone(h.ellipsis_lines(three, HC))
    four = "\n".join(["and then\u2026"] * 4 + ["fine."] * 6)         # 0.4: removed
    self.assertIsNotNone(h.ellipsis_lines(four, HC))

  def test_non_alpha_words(self):
    ok = " ".join(["word"] * 8 + ["123", "4.5"])                     # 0.2: kept
    self.assertIsNone(h.non_alpha_words(ok, HC))
    bad = " ".join(["word"] * 7 + ["123", "4.5", "--"])              # 0.3: removed
    self.assertIsNotNone(h.non_alpha_words(bad, HC))

  def test_stop_words_count_occurrences(self):
    self.assertIsNotNone(h.stop_words("The cat sat on a mat", HC, STOP))        # one
    self.assertIsNone(h.stop_words("The cat sat on the mat", HC, STOP))         # 'the' twice
    self.assertIsNone(h.stop_words("cats with hats and bats", HC, STOP))


class RepetitionTest(parameterized.TestCase):

  def test_duplicate_segment_fractions_closed_form(self):
    frac, chars = h.duplicate_segment_fractions(["aaaa", "aaaa", "bb"])
    self.assertAlmostEqual(frac, 2 / 3)
    self.assertAlmostEqual(chars, 8 / 10)
    self.assertEqual(h.duplicate_segment_fractions(["only"]), (0.0, 0.0))

  def test_dup_line_fraction_threshold(self):
    uniq = [f"line number {w}" for w in "abcdefghijklmnopqrstuvwxyz"]
    # 3 of 10 lines duplicated (a line repeated 3 times) -> 0.3 kept; 4 -> removed.
    ok = "\n".join(uniq[:7] + ["same line here"] * 3)
    bad = "\n".join(uniq[:6] + ["same line here"] * 4)
    self.assertIsNone(h.dup_line_frac(ok, HC))
    self.assertIsNotNone(h.dup_line_frac(bad, HC))

  def test_dup_paragraph_fraction_threshold(self):
    paras = [f"paragraph {w} text" for w in "abcdefgh"]
    ok = "\n\n".join(paras[:7] + ["again"] * 3)
    bad = "\n\n".join(paras[:6] + ["again"] * 4)
    self.assertIsNone(h.dup_para_frac(ok, HC))
    self.assertIsNotNone(h.dup_para_frac(bad, HC))

  def test_dup_line_char_fraction_threshold(self):
    # Repeated line of 10 chars twice = 20 chars of 100 total -> 0.2 kept.
    filler = "x" * 80
    ok = "\n".join([filler, "abcdefghij", "abcdefghij"])
    bad = "\n".join(["x" * 70, "abcdefghijklmno", "abcdefghijklmno"])   # 30/100
    self.assertIsNone(h.dup_line_char_frac(ok, HC))
    self.assertIsNotNone(h.dup_line_char_frac(bad, HC))

  def test_top_ngram_closed_form(self):
    words = "aa bb aa bb cc dd".split()
    # top 2-gram ("aa","bb") x2, 4 chars each, total chars 12 -> 8/12.
    self.assertAlmostEqual(h.top_ngram_char_fraction(words, 2), 8 / 12)
    self.assertEqual(h.top_ngram_char_fraction("a b c d".split(), 2), 0.0)

  def test_top_2gram_rule_threshold(self):
    uniq = [f"w{i:03d}" for i in range(100)]           # 100 words x 4 chars = 400 chars
    ok = " ".join(uniq[:90] + ["ab", "cd"] * 5)         # top 2-gram 'ab cd' 5 x 4 chars
    self.assertIsNone(h.top_ngram(2)(ok, HC))           # 20/380 = 0.05
    bad = " ".join(uniq[:40] + ["abcd", "efgh"] * 12)   # 12 x 8 = 96 / 256 = 0.375
    self.assertIsNotNone(h.top_ngram(2)(bad, HC))

  def test_duplicate_ngram_closed_form(self):
    words = "a b c d e a b c d e f".split()
    # The 5-gram (a..e) occurs twice; its 10 word occurrences cover 10 of 11 chars.
    self.assertAlmostEqual(h.duplicate_ngram_char_fraction(words, 5), 10 / 11)
    self.assertEqual(h.duplicate_ngram_char_fraction("a b c d e f".split(), 5), 0.0)

  @parameterized.parameters(5, 6, 7, 8, 9, 10)
  def test_dup_ngram_rule_both_sides(self, n):
    limit = HC.max_dup_ngram_char_frac[str(n)]
    uniq = [f"u{i:04d}" for i in range(2000)]          # 5-char unique words
    rep = [f"r{i:04d}" for i in range(n)]               # one n-gram of 5-char words
    # k copies of the repeated n-gram -> covered chars 5 n k over 5 (len(uniq)+n k).
    def doc(k, m):
      return " ".join(uniq[:m] + sum(([*rep, uniq[1000 + j]] for j in range(k)), []))
    k = 2
    m_ok = int(n * k / limit) + 5           # fraction below limit
    m_bad = int(n * k / limit) - 2 * n - 5  # fraction above limit
    self.assertIsNone(h.dup_ngram(n)(doc(k, m_ok), HC))
    self.assertIsNotNone(h.dup_ngram(n)(doc(k, m_bad), HC))

  def test_apply_rules_names_first_failure(self):
    rules = h.quality_rules(HC)
    self.assertEqual([r.name for r in rules][:3], ["page_length", "mean_word_length", "symbol_ratio"])
    self.assertEqual(h.apply_rules("too short", HC, rules, STOP)[0], "page_length")
    good = " ".join(f"{w}{i}" for i, w in enumerate((BASE + " ") .split() * 8))
    good = "The " + good + " and the end."
    self.assertEqual(h.apply_rules(good, HC, rules, STOP), (None, None))


class LineModifierTest(absltest.TestCase):

  def test_uppercase_lines(self):
    text = "Normal line of text\nSHOUTING HEADLINE HERE\nAnother normal line"
    self.assertEqual(h.uppercase_lines(text, LC), "Normal line of text\nAnother normal line")
    self.assertEqual(h.uppercase_lines("ABcd efgh", LC), "ABcd efgh")   # 2/9 upper

  def test_numeric_lines(self):
    self.assertEqual(h.numeric_lines("Keep me\n12345\nand 42 too", LC), "Keep me\nand 42 too")

  def test_counter_lines(self):
    text = "A real sentence here.\n1.2K views\n34 likes\n5 comments on this great post"
    self.assertEqual(h.counter_lines(text, LC), "A real sentence here.\n5 comments on this great post")

  def test_short_lines(self):
    self.assertEqual(h.short_lines("Home\nTwo words\n\nthree words here", LC),
                     "Two words\n\nthree words here")

  def test_boilerplate_phrases(self):
    text = "3 items in cart\nGreat article. Read more...\nSign-in to comment\nA line that mentions items in cart but is long enough to be kept as is ok"
    out = h.boilerplate_phrases(text, LC)
    self.assertEqual(out.split("\n"), ["3", "Great article.", "to comment",
                                       "A line that mentions items in cart but is long enough to be kept as is ok"])
    self.assertEqual(h.boilerplate_phrases("Read more...\nbody text", LC), "body text")

  def test_removed_words_threshold(self):
    after = " ".join(["w"] * 95)
    self.assertIsNone(h.removed_words(100, after, LC))              # 5% removed
    self.assertIsNotNone(h.removed_words(100, " ".join(["w"] * 94), LC))

  def test_document_modifiers(self):
    self.assertEqual(h.remove_urls("see https://x.org/a?b=1 and www.y.com now"), "see and now")
    self.assertEqual(h.limit_newlines("a\n\n\n\nb", 2), "a\n\nb")


class UrlFilterTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.bl = h.load_banlists(C.url_filter)

  def test_each_list(self):
    self.assertEqual(h.url_filter("https://www.spam-casino.example/a", self.bl)[0], "url_domain")
    self.assertIsNone(h.url_filter("https://sub.cheap-pills.example.org/a", self.bl)[0])
    self.assertEqual(h.url_filter("https://v-i-a-g-r-a.example/", self.bl)[0], "url_strict_word")
    self.assertEqual(h.url_filter("https://a.example/casino/x", self.bl)[0], "url_hard_word")
    self.assertIsNone(h.url_filter("https://a.example/casinos/x", self.bl)[0])   # whole words only
    self.assertIsNone(h.url_filter("https://a.example/live/news", self.bl)[0])  # one soft word
    self.assertEqual(h.url_filter("https://a.example/live/chat", self.bl)[0], "url_soft_words")
    self.assertIsNone(h.url_filter("https://docs.python.org/3/", self.bl)[0])


class LangIdTest(absltest.TestCase):

  def test_shipped_model(self):
    model = langid.load(C.langid.model)
    en = ("The library will stay closed until the end of the month while the building is "
          "renovated, but books can still be returned through the letter box at the main entrance.")
    de = ("Die Bibliothek bleibt bis Ende des Monats geschlossen, während das Gebäude renoviert "
          "wird, aber Bücher können weiterhin über den Briefkasten zurückgegeben werden.")
    fr = ("La bibliothèque restera fermée jusqu'à la fin du mois pendant la rénovation du "
          "bâtiment, mais les livres peuvent être rendus dans la boîte aux lettres.")
    lang, p = langid.top_language(model, en)
    self.assertEqual(lang, "en")
    self.assertGreater(p, C.langid.threshold)
    self.assertEqual(langid.top_language(model, de)[0], "de")
    self.assertEqual(langid.top_language(model, fr)[0], "fr")
    self.assertAlmostEqual(sum(langid.predict(model, en).values()), 1.0, places=6)

  def test_train_matches_closed_form(self):
    model, counts = langid.train({"a": ["aaa"], "b": ["bbb"]}, orders=(1,), bits=8, alpha=1.0)
    # "aaa" -> " aaa " -> unigrams: ' ' x2, 'a' x3. theta = (N + 1) / (5 + 256).
    probs = langid.predict(model, "a")
    x = langid.ngram_buckets("a", (1,), 8).astype(int)
    import numpy as np  # pylint: disable=g-import-not-at-top
    logp = np.log((counts + 1.0) / (counts.sum(1, keepdims=True) + 256))[:, x].sum(1)
    ref = np.exp(logp - logp.max())
    ref /= ref.sum()
    self.assertAlmostEqual(probs["a"], ref[0], places=5)
    self.assertGreater(probs["a"], 0.5)


if __name__ == "__main__":
  absltest.main()
