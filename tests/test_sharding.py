"""Tests for vsr_jax.sharding: the mesh from config, its checks, parameter rules, and data +
corpus parallelism as a config change (8 simulated devices as data 2 x corpus 4 give the losses
and metrics of 1, and so do two processes of 4 devices each)."""

import glob
import json
import os
import struct
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from tensorboardX.proto import event_pb2

from procs import free_port
from vsr_jax import config_lib, sharding
from vsr_jax.config_lib import ConfigError
from vsr_jax.workdir import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def test_mesh_from_config():
  config = config_lib.load(SMOKE)
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.axis_names == sharding.AXES and mesh.size == len(jax.devices())
  config.mesh.data = len(jax.devices()) + 1
  with pytest.raises(ConfigError, match=r"multiply to \d+, but \d+ devices are visible"):
    sharding.make_mesh(config.mesh)


def mesh_cfg(data, corpus=1, model=1):
  return ml_collections.ConfigDict({"data": data, "corpus": corpus, "model": model})


def test_axis_sizes_fill_and_refuse():
  assert sharding.axis_sizes(mesh_cfg(-1, 4), 8) == {"data": 2, "corpus": 4, "model": 1}
  assert sharding.axis_sizes(mesh_cfg(2, -1, 2), 8) == {"data": 2, "corpus": 2, "model": 2}
  with pytest.raises(ConfigError, match=r"data=2 x corpus=2 x model=1 multiply to 4, but 8"):
    sharding.axis_sizes(mesh_cfg(2, 2), 8)
  with pytest.raises(ConfigError, match=r"only one axis may be -1"):
    sharding.axis_sizes(mesh_cfg(-1, -1), 8)
  with pytest.raises(ConfigError, match=r"multiply to 3, which does not divide the 8"):
    sharding.axis_sizes(mesh_cfg(-1, 3), 8)
  with pytest.raises(ConfigError, match=r"mesh.corpus=0: expected >= 1 or -1"):
    sharding.axis_sizes(mesh_cfg(1, 0), 1)


class FakeMesh:
  def __init__(self, **shape):
    self.shape = shape


def test_batch_sizes_must_divide_over_the_data_axis():
  config = config_lib.load(SMOKE, {"grpo.batch_size": "6"})
  with pytest.raises(ConfigError, match=r"grpo.batch_size=6 must be divisible by the mesh's "
                     r"data axis \(4 devices"):
    sharding.check_batch_sizes(config, FakeMesh(data=4, corpus=2, model=1))
  # Only 'data' splits batches: a corpus axis of 4 asks nothing of them.
  sharding.check_batch_sizes(config, FakeMesh(data=2, corpus=4, model=1))


def test_corpus_axis_larger_than_the_corpus():
  with pytest.raises(ConfigError, match=r"mesh.corpus=8 is larger than the test split's "
                     r"corpus \(5 videos\)"):
    sharding.check_corpus(FakeMesh(data=1, corpus=8, model=1), 5, "test split's")
  sharding.check_corpus(FakeMesh(data=1, corpus=4, model=1), 5, "test")
  sharding.check_corpus(None, 1, "test")


def test_param_rules():
  mesh = FakeMesh(data=1, corpus=1, model=4)
  assert sharding.param_spec((256, 64), mesh, "replicated") == P()
  assert sharding.param_spec((256, 64), mesh, "fsdp") == P("model")
  assert sharding.param_spec((64, 256), mesh, "fsdp") == P(None, "model")
  assert sharding.param_spec((6, 1022), mesh, "fsdp") == P()        # nothing divides by 4
  assert sharding.param_spec((64,), mesh, "fsdp") == P()            # too small to split
  assert sharding.param_spec((256, 64), FakeMesh(data=8, corpus=1, model=1), "fsdp") == P()


def read_scalars(workdir):
  """{tag/step: value} from a run's TensorBoard event files (TFRecord framing)."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "tb", "events.out.tfevents*")):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out[f"{v.tag}@{event.step}"] = v.simple_value
  return out


SCRIPT = """
import json, sys
import jax
import numpy as np
from vsr_jax import config_lib, hosts, rollout, sharding, stages, train
smoke, out, data, corpus, coordinator, processes, pid = sys.argv[1:8]
config = config_lib.load(smoke, {
    "mesh.data": data, "mesh.corpus": corpus, "stages": "('engine', 'sft', 'grpo')",
    "mesh.init_timeout_s": "120", "mesh.heartbeat_timeout_s": "60",
    "eval.rows": str({r: config_lib.load(smoke).eval.rows[r].to_dict() for r in
                      ('engine_single_shot', 'agent_sqr_stage2')}),
    "data.dir": out + "/data" + processes})
workdir = f"{out}/mesh{data}x{corpus}p{processes}"
if int(processes) > 1:
  hosts.initialize(config.mesh, coordinator, int(processes), int(pid))
hosts.agree(config, workdir, "train", 60)
train.train_and_evaluate(config, workdir)
# Where the episode's frame store lives: this process's devices' shards of the eval corpus.
mesh = sharding.make_mesh(config.mesh)
ctx = stages.Context.open(config, workdir, mesh=mesh)
split = ctx.splits[config.data.eval_split]
c = rollout.Corpus.from_split(None, split, mesh)
vid = np.arange(len(split.num_frames))[::-1].copy()
got = hosts.fetch(jax.jit(lambda cc, v: cc.take(v))(c, vid))
print("RESULT" + json.dumps({
    "videos": len(split.num_frames), "padded": c.features.shape[0],
    "devices": len(jax.devices()), "processes": jax.process_count(),
    "shard_rows": sorted(s.data.shape[0] for s in c.features.addressable_shards),
    "num_frames_rows": sorted(s.data.shape[0] for s in c.num_frames.addressable_shards),
    "take_equal": bool(np.array_equal(got[0], split.features[vid])
                       and np.array_equal(got[1], split.num_frames[vid]))}), flush=True)
"""


def run_mesh(out, devices, data, corpus, processes=1):
  """The smoke pipeline on `processes` processes of `devices` CPU devices each; the RESULT
  line of each process, in process order."""
  env = dict(os.environ,
             XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
             + f" --xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu")
  coordinator = f"127.0.0.1:{free_port()}" if processes > 1 else ""
  procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, SMOKE, out, str(data), str(corpus),
                             coordinator, str(processes), str(i)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(processes)]
  results = []
  for i, proc in enumerate(procs):
    stdout, stderr = proc.communicate(timeout=1200)
    assert proc.returncode == 0, f"process {i}: {stderr[-4000:]}"
    line = [x for x in stdout.splitlines() if x.startswith("RESULT")][-1]
    results.append(json.loads(line[len("RESULT"):]))
  return results


def test_a_run_split_over_devices_and_processes_matches_one_device(tmp_path):
  """Stage 0, SFT, GRPO (its train corpus split over 'corpus') and the evaluation episode on
  8 simulated devices as data 2 x corpus 4, in two processes of 4 devices each (multi-host:
  gloo collectives, process 0 writing), give the losses (every logged scalar) and metrics of
  1 device, and each device holds a quarter of the frame store.
  """
  out = str(tmp_path)
  hosts2 = run_mesh(out, 4, 2, 4, processes=2)
  # Last: by then tests/test_train.py's smoke run (started at the same time on the other
  # xdist worker) has put these one-device programs in the session's compilation cache.
  [one] = run_mesh(out, 1, 1, 1)
  assert one["shard_rows"] == [one["videos"]]
  quarter = -(-one["videos"] // 4)
  for r in hosts2:     # each process holds its 4 devices' shards: 4 corpus shards over 2 data
    assert r["processes"] == 2 and r["devices"] == 8 and r["padded"] == 4 * quarter
    assert r["shard_rows"] == [quarter] * 4 and r["num_frames_rows"] == [quarter] * 4
  assert all(r["take_equal"] for r in [one] + hosts2)
  # Only process 0 wrote the shared outputs; the other wrote none of its own.
  assert os.listdir(f"{out}/mesh2x4p2/tb") and not glob.glob(f"{out}/mesh2x4p2/.staging*")
  a = read_scalars(f"{out}/mesh1x1p1")
  assert any(k.startswith("grpo/loss") for k in a) and any(k.startswith("sft/") for k in a)
  m1 = read_json(f"{out}/mesh1x1p1/metrics.json")
  assert set(m1) == {"engine_single_shot", "agent_sqr_stage2"}
  b = read_scalars(f"{out}/mesh2x4p2")
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(b[key], a[key], rtol=2e-3, atol=2e-4, err_msg=key)
  m8 = read_json(f"{out}/mesh2x4p2/metrics.json")
  for row in m1:
    for metric, value in m1[row].items():
      if metric != "per_turn":
        np.testing.assert_allclose(m8[row][metric], value, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{row}/{metric}")
