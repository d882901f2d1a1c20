"""The progress line: rate and ETA from timed work only."""
from unittest import mock

from absl.testing import absltest

from framework import progress as progress_lib


class ProgressTest(absltest.TestCase):

  def test_rate_and_eta_exclude_skipped_units(self):
    now = [100.0]
    lines = []
    with mock.patch.object(progress_lib.time, "perf_counter", lambda: now[0]):
      p = progress_lib.Progress(12, "sweep", every_s=0.0, unit="run", print_fn=lines.append)
      p.update(6, skipped=True)      # reused runs, no time spent
      now[0] = 110.0
      p.update(2, optimizer="soap")  # two real runs in 10 s
      self.assertAlmostEqual(p.rate(), 0.2)
    self.assertEqual(p.count, 8)
    self.assertIn("8/12 (66.7%)", lines[-1])
    self.assertIn("0.2 run/s", lines[-1])
    self.assertIn("eta 0:00:20", lines[-1])  # 4 runs left at 0.2 run/s
    self.assertIn("optimizer soap", lines[-1])


if __name__ == "__main__":
  absltest.main()
