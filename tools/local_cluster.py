r"""Run N local processes as one multi-process JAX job (CPU, gloo collectives).

  python -m tools.local_cluster -n 2 --devices_per_process=4 -- \
      --config=experiments/configs/lm_quickstart.py --workdir=runs/two_procs

starts `python -m experiments.launch <args after -->` N times. Process i gets

  JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>   JAX_NUM_PROCESSES=N
  JAX_PROCESS_ID=i                                JAX_PLATFORMS=cpu
  XLA_FLAGS=--xla_force_host_platform_device_count=<devices_per_process>
  JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo         JAX_HEARTBEAT_TIMEOUT_SECONDS=<s>

and `experiments.launch` calls `jax.distributed.initialize` from them
(`framework.mesh.maybe_initialize_distributed`) before anything else touches
JAX: the job sees N x devices_per_process devices, each process feeds its own
rows of every global batch, and checkpoints are written by all processes
together. The same variables, set by hand on N machines (with a reachable
coordinator address), start a real multi-host CPU job.

Output: every line of process i is printed with the prefix `[i] ` (and kept in
`<process_logs>/process_<i>.log` with --process_logs).

Failure: when a process exits with a non-zero status or is killed, the others
can no longer make progress (their next collective has no peer). The cluster
prints which process died and how, gives the others `--grace_s` seconds to
exit on their own (JAX's coordination service notices a missing heartbeat),
then stops them (SIGTERM, SIGKILL 5 s later), and exits with the dead
process's status: the job ends in bounded time instead of hanging.
`--timeout_s` bounds the whole run the same way. SIGINT / SIGTERM to the
cluster are passed on to every process (the trainer saves and stops).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Optional, Sequence

from absl import app, flags

def _define_flags():
  """Flags exist only when this runs as a program, so importing it (tests) defines none."""
  global _N, _DEVICES, _MODULE, _PORT, _HEARTBEAT, _GRACE, _TIMEOUT, _LOG_DIR
  _N = flags.DEFINE_integer("n", 2, "Number of processes.")
  _DEVICES = flags.DEFINE_integer("devices_per_process", 4,
                                  "Fake CPU devices per process (XLA host platform).")
  _MODULE = flags.DEFINE_string("module", "experiments.launch",
                                "Python module each process runs (python -m).")
  _PORT = flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
  _HEARTBEAT = flags.DEFINE_integer("heartbeat_s", 10,
                                    "JAX heartbeat timeout: a process that stopped answering "
                                    "is declared dead after this many seconds.")
  _GRACE = flags.DEFINE_float("grace_s", 15.0,
                              "After a process died, seconds the others get to exit on "
                              "their own before they are stopped.")
  _TIMEOUT = flags.DEFINE_float("timeout_s", 0.0, "Stop every process after this many "
                                "seconds (0: no limit).")
  _LOG_DIR = flags.DEFINE_string("process_logs", "", "Also write process_<i>.log files here.")

STOP_WAIT_S = 5.0


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return int(s.getsockname()[1])


_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                    "JAX_HEARTBEAT_TIMEOUT_SECONDS")


def process_env(index: int, num: int, port: int, devices: int, heartbeat_s: int,
                base: Optional[dict] = None) -> dict[str, str]:
  """The environment of process `index` of `num` (module docstring); one
  process (-n 1) is a plain single-process run on `devices` devices."""
  env = dict(os.environ if base is None else base)
  for key in _DISTRIBUTED_ENV:
    env.pop(key, None)
  flags_ = [f for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
  env.update({
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": " ".join(flags_ + [f"--xla_force_host_platform_device_count={devices}"]),
  })
  if num > 1:
    env.update({
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(num),
        "JAX_PROCESS_ID": str(index),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "JAX_HEARTBEAT_TIMEOUT_SECONDS": str(int(heartbeat_s)),
    })
  return env


def describe_status(code: int) -> str:
  if code < 0:
    try:
      return f"killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"killed by signal {-code}"
  return f"exited with status {code}"


def _pump(index: int, stream: IO[bytes], log: Optional[IO[str]], lock: threading.Lock,
          print_fn):
  for raw in iter(stream.readline, b""):
    line = raw.decode("utf-8", "replace").rstrip("\n")
    with lock:
      print_fn(f"[{index}] {line}", flush=True)
      if log is not None:
        log.write(line + "\n")
        log.flush()
  stream.close()


class Cluster:
  """N processes of `command` (argv list); `wait()` returns the job's status."""

  def __init__(self, num: int, command: Sequence[str], *,
               devices_per_process: int = 4, port: int = 0, heartbeat_s: int = 10,
               grace_s: float = 15.0, timeout_s: float = 0.0, log_dir: str = "",
               cwd: Optional[str] = None, print_fn=print):
    if num < 1:
      raise ValueError(f"-n must be >= 1, got {num}")
    self.num, self.grace_s, self.timeout_s = num, grace_s, timeout_s
    self.print = print_fn
    self.port = port or free_port()
    self.procs: list[subprocess.Popen] = []
    self.threads: list[threading.Thread] = []
    self.exit_times: list[Optional[float]] = [None] * num   # to tell who died first
    self.logs: list[IO[str]] = []
    lock = threading.Lock()
    if log_dir:
      os.makedirs(log_dir, exist_ok=True)
    self.start = time.monotonic()
    for i in range(num):
      env = process_env(i, num, self.port, devices_per_process, heartbeat_s)
      proc = subprocess.Popen(list(command), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
      self.procs.append(proc)
      log = open(os.path.join(log_dir, f"process_{i}.log"), "w") if log_dir else None
      if log is not None:
        self.logs.append(log)
      thread = threading.Thread(target=_pump, args=(i, proc.stdout, log, lock, print_fn),
                                daemon=True)
      thread.start()
      self.threads.append(thread)
      threading.Thread(target=self._note_exit, args=(i,), daemon=True).start()
    self.print(f"local_cluster: {num} processes x {devices_per_process} devices, "
               f"coordinator 127.0.0.1:{self.port}, pids "
               f"{[p.pid for p in self.procs]}", flush=True)

  def _note_exit(self, index: int) -> None:
    self.procs[index].wait()
    self.exit_times[index] = time.monotonic()

  def signal_all(self, sig: int) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, sig)
        except ProcessLookupError:
          pass

  def _stop_rest(self, reason: str) -> None:
    """Gives the running processes `grace_s`, then SIGTERM, then SIGKILL."""
    deadline = time.monotonic() + self.grace_s
    while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
      time.sleep(0.1)
    running = [i for i, p in enumerate(self.procs) if p.poll() is None]
    if not running:
      return
    self.print(f"local_cluster: stopping process(es) {running} ({reason})", flush=True)
    self.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
      time.sleep(0.1)
    self.signal_all(signal.SIGKILL)
    for proc in self.procs:
      proc.wait()

  def wait(self) -> int:
    """Waits for all processes; returns 0, or the status of the first that failed."""
    failed: Optional[tuple[int, int]] = None
    try:
      while True:
        codes = [p.poll() for p in self.procs]
        bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if bad:
          time.sleep(0.05)  # let the waiter threads note the exit times
          failed = min(bad, key=lambda ic: self.exit_times[ic[0]] or float("inf"))
          elapsed = time.monotonic() - self.start
          if any(c is None for c in codes):
            self.print(f"local_cluster: process {failed[0]} {describe_status(failed[1])} "
                       f"after {elapsed:.1f} s; the others cannot go on without it and get "
                       f"{self.grace_s:g} s to exit before they are stopped", flush=True)
            self._stop_rest(f"process {failed[0]} died")
          break
        if all(c is not None for c in codes):
          break
        if self.timeout_s and time.monotonic() - self.start > self.timeout_s:
          self.print(f"local_cluster: timeout after {self.timeout_s:g} s", flush=True)
          self.grace_s = 0.0
          self._stop_rest("timeout")
          return 124
        time.sleep(0.1)
    except KeyboardInterrupt:
      self.signal_all(signal.SIGTERM)
      self._stop_rest("interrupted")
      raise
    finally:
      for thread in self.threads:
        thread.join(timeout=5)
      for log in self.logs:
        log.close()
    codes = [p.returncode for p in self.procs]
    total = time.monotonic() - self.start
    if failed is None:
      self.print(f"local_cluster: all {self.num} processes finished in {total:.1f} s",
                 flush=True)
      return 0
    others = ", ".join(f"{i}: {describe_status(c)}" for i, c in enumerate(codes)
                       if i != failed[0])
    self.print(f"local_cluster: FAILED: process {failed[0]} {describe_status(failed[1])}; "
               f"others {others or '-'}; {total:.1f} s in all", flush=True)
    return failed[1] if failed[1] > 0 else 128 - failed[1]


def main(argv):
  args = argv[1:]
  if not args:
    raise app.UsageError("give the launch arguments after --, e.g. "
                         "-n 2 -- --config=experiments/configs/lm_quickstart.py")
  cluster = Cluster(_N.value, [sys.executable, "-m", _MODULE.value, *args],
                    devices_per_process=_DEVICES.value, port=_PORT.value,
                    heartbeat_s=_HEARTBEAT.value, grace_s=_GRACE.value,
                    timeout_s=_TIMEOUT.value, log_dir=_LOG_DIR.value)

  def forward(signum, _frame):
    cluster.print(f"local_cluster: got {signal.Signals(signum).name}; passing it on",
                  flush=True)
    cluster.signal_all(signum)
  signal.signal(signal.SIGTERM, forward)
  sys.exit(cluster.wait())


if __name__ == "__main__":
  _define_flags()
  app.run(main)
