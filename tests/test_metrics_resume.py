"""MetricWriter.resume: each step's records exactly once across kills and resumes."""
import glob
import json
import os
import struct

from absl.testing import absltest
from tensorboardX.proto import event_pb2

from framework import metrics as metrics_lib


def _events(workdir):
  """Every event in the run's TensorBoard files (TFRecord framing: length, crc, data, crc)."""
  events = []
  for path in sorted(glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


class MetricWriterResumeTest(absltest.TestCase):

  def test_resume_drops_later_records_and_does_not_repeat_the_resumed_step(self):
    workdir = self.create_tempdir().full_path
    writer = metrics_lib.MetricWriter(workdir)
    for step in range(1, 10):
      writer.write(step, {"train/loss": float(step)})
    writer.write(5, {"eval/loss": 0.5})
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write('{"step": 10, "train/lo')  # a line cut short by SIGKILL
    writer = metrics_lib.MetricWriter(workdir)
    writer.resume(5)
    writer.write(5, {"eval/loss": 0.5})            # re-evaluated at the resumed step: skipped
    writer.write(5, {"eval/accuracy": 0.9})        # new at that step: written
    for step in range(6, 8):
      writer.write(step, {"train/loss": 10.0 + step})
    writer.close()
    records = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    self.assertEqual([(r["step"], sorted(k for k in r if k != "step")) for r in records],
                     [(1, ["train/loss"]), (2, ["train/loss"]), (3, ["train/loss"]),
                      (4, ["train/loss"]), (5, ["train/loss"]), (5, ["eval/loss"]),
                      (5, ["eval/accuracy"]), (6, ["train/loss"]), (7, ["train/loss"])])
    self.assertEqual(records[-1]["train/loss"], 17.0)
    self.assertEqual(metrics_lib.last_logged(writer.path), {"loss": 17.0})
    self.assertEqual(metrics_lib.last_logged(writer.path, "eval/"), {"accuracy": 0.9})

  def test_tensorboard_purges_the_redone_steps(self):
    workdir = self.create_tempdir().full_path
    writer = metrics_lib.MetricWriter(workdir)
    for step in range(1, 10):
      writer.write(step, {"train/loss": float(step)})
    writer.close()
    writer = metrics_lib.MetricWriter(workdir)
    writer.resume(5)
    writer.write(6, {"train/loss": 16.0})
    writer.close()
    events = _events(workdir)
    purges = [e.step for e in events if e.HasField("session_log")
              and e.session_log.status == event_pb2.SessionLog.START]
    self.assertEqual(purges, [6])  # TensorBoard hides older events at step >= 6
    last = [(e.step, v.simple_value) for e in events for v in e.summary.value]
    self.assertEqual(last[-1], (6, 16.0))

  def test_resume_on_a_fresh_directory_is_empty(self):
    workdir = self.create_tempdir().full_path
    writer = metrics_lib.MetricWriter(workdir)
    writer.resume(0)
    writer.write(1, {"train/loss": 1.0})
    writer.close()
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      self.assertEqual([json.loads(l) for l in f], [{"step": 1, "train/loss": 1.0}])
    self.assertEqual(metrics_lib.last_logged(os.path.join(workdir, "missing.jsonl")), {})


if __name__ == "__main__":
  absltest.main()
