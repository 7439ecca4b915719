"""Tests for vsr_jax.sharding: the mesh from config, batch-size checks, and data parallelism as
a config change (8 simulated devices give the losses and metrics of 1)."""

import glob
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from vsr_jax import config_lib, sharding
from vsr_jax.config_lib import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def test_mesh_from_config():
  config = config_lib.load(SMOKE)
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.axis_names == (sharding.DATA,) and mesh.size == 1
  config.mesh.data = len(jax.devices()) + 1
  with pytest.raises(ConfigError, match=r"mesh.data=\d+, but only \d+ devices"):
    sharding.make_mesh(config.mesh)


def test_batch_sizes_must_divide_over_the_mesh():
  config = config_lib.load(SMOKE, {"grpo.batch_size": "6"})

  class FakeMesh:
    size = 4
  with pytest.raises(ConfigError, match=r"grpo.batch_size=6 must be divisible by the 4"):
    sharding.check_batch_sizes(config, FakeMesh())
  config.grpo.batch_size = 8
  sharding.check_batch_sizes(config, FakeMesh())


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
import sys
from vsr_jax import config_lib, train
smoke, out = sys.argv[1], sys.argv[2]
for n in (1, 8):
  config = config_lib.load(smoke, {
      "mesh.data": str(n), "stages": "('engine', 'sft', 'grpo')",
      "eval.rows": str({r: config_lib.load(smoke).eval.rows[r].to_dict() for r in
                        ('engine_single_shot', 'agent_sqr_stage1', 'agent_sqr_stage2')}),
      "data.dir": out + "/data"})
  train.train_and_evaluate(config, f"{out}/mesh{n}")
"""


def test_eight_devices_match_one(tmp_path):
  """Stage 0, SFT, GRPO and the evaluation episode on a mesh of 8 simulated devices give the
  losses (every logged scalar) and metrics of a mesh of 1, up to float tolerance."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = str(tmp_path)
  proc = subprocess.run([sys.executable, "-c", SCRIPT, SMOKE, out], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  one, eight = read_scalars(f"{out}/mesh1"), read_scalars(f"{out}/mesh8")
  assert one.keys() == eight.keys()
  assert any(k.startswith("grpo/loss") for k in one) and any(k.startswith("sft/") for k in one)
  for key in one:
    np.testing.assert_allclose(eight[key], one[key], rtol=2e-3, atol=2e-4, err_msg=key)
  with open(f"{out}/mesh1/metrics.json") as f:
    m1 = json.load(f)
  with open(f"{out}/mesh8/metrics.json") as f:
    m8 = json.load(f)
  assert set(m1) == {"engine_single_shot", "agent_sqr_stage1", "agent_sqr_stage2"}
  for row in m1:
    for name, value in m1[row].items():
      if name != "per_turn":
        np.testing.assert_allclose(m8[row][name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=f"{row}/{name}")
