"""tools.bench_train_step: its summary statistics, interleaving and step parity."""
from absl.testing import absltest
import numpy as np

from tools import bench_train_step as bench


class SummaryTest(absltest.TestCase):

  def test_spread_median_quartiles_iqr(self):
    s = bench.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    self.assertEqual((s["median"], s["min"], s["max"], s["q25"], s["q75"], s["n"]),
                     (3.0, 1.0, 5.0, 2.0, 4.0, 5))
    self.assertEqual(s["iqr"], 2.0)
    # Even n: the median averages the middle two; quartiles interpolate linearly
    # (numpy's default): positions 0.75 and 2.25 of the sorted sample.
    s = bench.spread([4.0, 1.0, 2.0, 10.0])
    self.assertEqual(s["median"], 3.0)
    self.assertAlmostEqual(s["q25"], 1.75)
    self.assertAlmostEqual(s["q75"], 5.5)
    self.assertAlmostEqual(s["iqr"], 3.75)

  def test_ratio_is_plain_over_framework_per_round(self):
    times = {"framework": [1.0, 2.0, 4.0], "plain": [1.1, 2.0, 3.6]}
    r = bench.ratio_summary(times)
    self.assertAlmostEqual(r["median"], 1.0)
    self.assertAlmostEqual(r["min"], 0.9)
    self.assertAlmostEqual(r["max"], 1.1)

  def test_interleave_rotates_and_warms_up(self):
    log, now = [], [0.0]
    cost = {"a": 1.0, "b": 3.0, "c": 5.0}

    def runner(name):
      def run(n):
        log.append((name, n))
        now[0] += n * cost[name]
      return run

    runners = {n: runner(n) for n in ("a", "b", "c")}
    times = bench.interleave(runners, rounds=4, steps=2, clock=lambda: now[0])
    turns = [log[i:i + 2] for i in range(0, len(log), 2)]
    self.assertLen(turns, 12)
    for (n1, k1), (n2, k2) in turns:  # one untimed step, then the timed ones
      self.assertEqual((n1, k1, k2), (n2, 1, 2))
    firsts = [turns[3 * r][0][0] for r in range(4)]
    self.assertEqual(firsts, ["a", "b", "c", "a"])
    for n, c in cost.items():  # the warm-up step is not counted
      self.assertEqual(times[n], [c] * 4)

  def test_memory_bytes_fields(self):
    class _M:
      temp_size_in_bytes, argument_size_in_bytes = 10, 20
      output_size_in_bytes, alias_size_in_bytes = 30, 5

    class _C:
      def memory_analysis(self):
        return _M()

    m = bench.memory_bytes(_C())
    self.assertEqual(m, {"temp": 10, "argument": 20, "output": 30, "alias": 5, "peak": 60})


class ParityTest(absltest.TestCase):

  def test_both_steps_give_the_same_losses(self):
    b = bench.Bench("tiny")
    # Step 1 sees the same initial parameters; step 2 sees each program's own
    # update, so equal losses there also check that the updates agree.
    fw = [float(b.framework(1)) for _ in range(3)]
    plain = [float(b.plain(1)) for _ in range(3)]
    np.testing.assert_allclose(fw, plain, rtol=2e-5)
    self.assertNotEqual(fw[0], fw[2])  # the steps do train


if __name__ == "__main__":
  absltest.main()
