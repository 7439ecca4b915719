"""Tests for vsr_jax.hosts: the flags that start a multi-host run, and how several processes
fail -- a config or process count that differs between them, a process that dies -- with a
clear error within a timeout, never a hang. (The smoke pipeline on 2 processes x 4 devices
against 1 x 8 and 1 device: tests/test_sharding.py.)"""

import os
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from procs import free_port
from vsr_jax import hosts
from vsr_jax.config_lib import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
MESH = ml_collections.ConfigDict({"init_timeout_s": 30, "heartbeat_timeout_s": 5})


@pytest.mark.parametrize("args, needle", [
    (("127.0.0.1:1", 2, 2), "--process_id=2 is not below --num_processes=2"),
    (("127.0.0.1:1", 2, -1), "go together"),
    (("", 2, 0), "go together"),
])
def test_bad_process_flags_are_refused_before_joining(args, needle):
  with pytest.raises(ConfigError, match=needle):
    hosts.initialize(MESH, *args)


def test_one_process_needs_nothing():
  assert hosts.initialize(MESH) == 1 and not jax.distributed.is_initialized()
  assert hosts.initialize(MESH, "127.0.0.1:1", 1, 0) == 1 and hosts.is_primary()
  assert hosts.primary_first(lambda: 7, "x") == 7 and hosts.on_primary(lambda: 8, "y") == 8


def test_put_rows_and_fetch_on_one_process():
  mesh = jax.make_mesh((1,), ("data",))
  s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  batch = {"a": np.arange(12).reshape(6, 2), "b": np.ones(6, np.float32)}
  out = hosts.fetch(hosts.put_rows(batch, s))
  np.testing.assert_array_equal(out["a"], batch["a"])
  assert hosts._rows(s, (6, 2)) == (0, 6)


WORKER = """
import os, sys, time
import jax
from vsr_jax import config_lib, hosts
coordinator, n, pid, seed, die_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    sys.argv[4], int(sys.argv[5])
config = config_lib.load(sys.argv[6], {"seed": seed, "mesh.init_timeout_s": "20",
                                       "mesh.heartbeat_timeout_s": "5"})
try:
  hosts.initialize(config.mesh, coordinator, n, pid)
  hosts.agree(config, "/tmp/agree_workdir", "train", 20)
except config_lib.ConfigError as e:
  print("CONFIG ERROR", e, flush=True)
  os._exit(2)
print("JOINED", jax.process_count(), flush=True)
for step in range(200):
  hosts.barrier(f"step {step}")
  if step == die_at and pid == 1:
    os._exit(9)                      # killed: no exception, no goodbye
  time.sleep(0.05)
print("DONE", flush=True)
"""


def launch(specs, timeout=120):
  """Processes of WORKER (one per (num_processes, process_id, seed, die_at)); their
  (returncode, stdout + stderr, seconds)."""
  port = free_port()
  env = dict(os.environ,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + " --xla_force_host_platform_device_count=1",
             JAX_PLATFORMS="cpu")
  t0 = time.time()
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, f"127.0.0.1:{port}", str(n),
                             str(pid), str(seed), str(die_at), SMOKE], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for n, pid, seed, die_at in specs]
  out = []
  for p in procs:
    text, _ = p.communicate(timeout=timeout)
    out.append((p.returncode, text, time.time() - t0))
  return out


def test_processes_that_agree_run_together():
  a, b = launch([(2, 0, 0, -1), (2, 1, 0, -1)])
  assert a[0] == 0 and b[0] == 0, a[1][-2000:] + b[1][-2000:]
  assert "JOINED 2" in a[1] and "DONE" in a[1] and "DONE" in b[1]


def test_a_process_with_another_config_is_named():
  """Both stop before anything compiles; process 0 (it holds the key-value store, so it
  always reads the other's report) names the difference. Process 1 names it too, unless
  process 0 has already gone, which ends it as a lost coordinator."""
  a, b = launch([(2, 0, 0, -1), (2, 1, 1, -1)])
  assert a[0] == 2, a[1][-2000:]
  assert "CONFIG ERROR process 1 differs from process 0 in config" in a[1]
  assert b[0] != 0 and "JOINED" not in b[1]


def test_a_process_count_that_disagrees_is_named():
  a, b = launch([(2, 0, 0, -1), (3, 1, 0, -1)])
  assert a[0] == 2 and "num_processes (3 vs 2)" in a[1], a[1][-2000:]
  assert b[0] != 0


def test_a_dead_process_stops_the_other_within_the_heartbeat_timeout():
  """Process 1 dies (os._exit) at step 20; process 0 must not hang in the next barrier: jax's
  coordination service ends it, naming the task that stopped, within mesh.heartbeat_timeout_s
  (5 s here) plus a margin."""
  a, b = launch([(2, 0, 0, -1), (2, 1, 0, 20)])
  assert b[0] == 9
  assert a[0] != 0 and "DONE" not in a[1]
  assert "stopped sending heartbeats" in a[1] and "\n1\n" in a[1], a[1][-3000:]
  assert a[2] - b[2] < 5 + 20, (a[2], b[2])
