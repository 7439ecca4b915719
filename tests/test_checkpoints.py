"""Tests for vsr_jax.checkpoints: save / restore, compatibility by structure, shapes and the
stage's meaning-changing fields (not by the whole config of the code that wrote them)."""
import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vsr_jax import checkpoints, defaults
from vsr_jax.workdir import WorkdirError

# Orbax leaves an un-awaited read coroutine behind when a restore fails on a shape mismatch.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


STATE = {"params": {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.array([1, -2, 3], jnp.int32)},
         "step": jnp.array(7, jnp.int32)}
DESCRIPTION = {"stage": "engine", "fields": {"seed": 0, "engine.embed_dim": 32}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("ckpt"))
  ck = checkpoints.Checkpoints(wd, "engine", max_to_keep=2)
  assert ck.latest_step() is None
  ck.save(5, STATE, DESCRIPTION, extra={"pool": np.arange(4, dtype=np.int64)})
  ck.wait()         # saves are asynchronous: the files land in the background
  yield wd, ck
  ck.close()
  gc.collect()      # collect Orbax's abandoned read coroutines here, under this module's filter


def test_checkpoint_round_trip(saved):
  wd, ck = saved
  assert ck.latest_step() == 5
  assert os.path.isdir(os.path.join(wd, "checkpoints", "engine", "5"))
  desc = ck.description(5)
  assert {k: v for k, v in desc.items() if k != "integrity"} == DESCRIPTION
  assert desc["integrity"]["signature"] == [["['params']['b']", [3], "int32"],
                                            ["['params']['w']", [2, 3], "float32"],
                                            ["['step']", [], "int32"]]
  assert desc["integrity"]["sha256"] == checkpoints.digest(jax.device_get(STATE))
  abstract = jax.tree.map(jnp.zeros_like, STATE)
  state = ck.restore(5, abstract, DESCRIPTION)
  assert jax.tree.structure(state) == jax.tree.structure(STATE)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(STATE)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(ck.restore_extra(5)["pool"], np.arange(4))


def test_checkpoint_survives_a_new_manager(saved):
  wd, _ = saved
  ck = checkpoints.Checkpoints(wd, "engine")
  try:
    assert ck.latest_step() == 5
    state = ck.restore(5, STATE, DESCRIPTION)
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"])
  finally:
    ck.close()


def test_restore_with_a_different_description(saved):
  _, ck = saved
  other = {"stage": "engine", "fields": {"seed": 1, "engine.embed_dim": 64}}
  with pytest.raises(WorkdirError) as e:
    ck.restore(5, STATE, other)
  assert "seed: checkpoint 0, this run 1; engine.embed_dim: checkpoint 32, this run 64" in str(
      e.value)


def test_restore_into_a_different_shape(saved):
  _, ck = saved
  bigger = {"params": {"w": jnp.zeros((3, 3)), "b": STATE["params"]["b"]},
            "step": STATE["step"]}
  with pytest.raises(WorkdirError, match=r"does not fit this run's engine state \(another "
                     r"structure or shapes\): \['params'\]\['w'\]: checkpoint float32\[2, 3\], this run "
                     r"float32\[3, 3\]$"):
    ck.restore(5, bigger, DESCRIPTION)
  missing = {"params": {"w": STATE["params"]["w"]}, "step": STATE["step"]}
  with pytest.raises(WorkdirError, match=r"does not fit this run's engine state \(another "
                     r"structure or shapes\): \['params'\]\['b'\]: checkpoint int32\[3\], this run absent"):
    ck.restore(5, missing, DESCRIPTION)


def test_missing_step_is_a_workdir_error(saved):
  _, ck = saved
  with pytest.raises(WorkdirError, match="99: no such step"):
    ck.description(99)
  assert ck.restore_extra(99) == {}




def test_a_field_the_writer_did_not_have_takes_its_default(saved):
  """A checkpoint written before a meaning-changing field existed: the field's default is
  what it meant; a run that keeps the default restores it, another value is refused."""
  _, ck = saved
  base = defaults.base_config()
  new = {"stage": "engine", "fields": dict(DESCRIPTION["fields"], **{
      "agent.latent_eps": base.agent.latent_eps})}
  ck.restore(5, STATE, new)
  new["fields"]["agent.latent_eps"] = 1e-6
  with pytest.raises(WorkdirError, match=r"agent.latent_eps: checkpoint 1.0, this run 1e-06"):
    ck.restore(5, STATE, new)


def test_describe_reads_the_meaning_fields():
  config = defaults.base_config()
  d = checkpoints.describe(config, "sft", ("agent.refine", "data.synthetic.coarse_values"),
                           key="k")
  assert d == {"stage": "sft", "key": "k", "fields": {"agent.refine": "sqr",
               "data.synthetic.coarse_values": list(config.data.synthetic.coarse_values)}}


def test_legacy_descriptions_are_read_by_field():
  """Descriptions written before `fields` (whole config sections) still decide by field."""
  engine = {"engine": {"text": {"kind": "scratch"}}, "seed": 0, "max_query_len": 24,
            "feature_dim": 256, "vocab_size": 90}
  agent = {"agent": {"latent_eps": 1.0, "sqr_head": "parallel"}, "refine": "sqr",
           "engine": engine, "sft": {"steps": 450}}
  now = {"fields": {"engine.text.kind": "scratch", "agent.refine": "sqr",
                    "agent.latent_eps": 1.0}}
  assert checkpoints.incompatible(agent, now, defaults.base_config()) == []
  now["fields"]["agent.latent_eps"] = 0.5
  assert checkpoints.incompatible(agent, now, defaults.base_config()) == [
      "agent.latent_eps: checkpoint 1.0, this run 0.5"]
  assert checkpoints.incompatible(engine, {"fields": {"engine.text.kind": "minilm"}},
                                  defaults.base_config()) == [
      "engine.text.kind: checkpoint 'scratch', this run 'minilm'"]


def test_legacy_descriptions_take_missing_fields_from_the_run():
  """Descriptions before `fields` stored no data.* fields: a real-benchmark run's own config
  (its config.json), not today's defaults, says what they were."""
  engine = {"engine": {"text": {"kind": "scratch"}}, "seed": 0, "max_query_len": 32,
            "feature_dim": 256, "vocab_size": 90}
  run = defaults.base_config()
  with run.unlocked():
    run.data.source, run.data.tfds.name, run.data.fps = "tfds", "tvr/default", 0.5
  now = {"fields": {"data.source": "tfds", "data.tfds.name": "tvr/default", "data.fps": 0.5}}
  assert checkpoints.incompatible(engine, now, run) == []
  assert len(checkpoints.incompatible(engine, now, defaults.base_config())) == 3


def _damage(directory: str) -> str:
  """Overwrites bytes in the middle of the largest data file of a checkpoint step."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs
           if "description" not in r and not f.startswith("_")]
  path = max(files, key=os.path.getsize)
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.seek(size // 2)
    f.write(os.urandom(min(64, max(1, size - size // 2))))
  return path


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path):
  wd = str(tmp_path)
  with checkpoints.Checkpoints(wd, "sft", max_to_keep=3) as ck:
    for step in (5, 10):
      state = jax.tree.map(lambda x, s=step: x + s, STATE)
      ck.save(step, state, DESCRIPTION)
    ck.wait()
  _damage(os.path.join(wd, "checkpoints", "sft", "10"))
  with checkpoints.Checkpoints(wd, "sft") as ck:
    with pytest.raises(checkpoints.DamagedCheckpoint, match=r"sft/10 is damaged"):
      ck.restore(10, STATE, DESCRIPTION)
    step, state = ck.restore_intact(STATE, DESCRIPTION)
    assert step == 5
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"] + 5)
    assert ck.all_steps() == [5]                      # 10 moved aside, its number free again
  aside = os.listdir(os.path.join(wd, "checkpoints", "sft.damaged"))
  assert len(aside) == 1 and aside[0].startswith("10-")


def test_every_checkpoint_damaged_is_one_error_that_says_so(tmp_path):
  wd = str(tmp_path)
  with checkpoints.Checkpoints(wd, "grpo") as ck:
    ck.save(3, STATE, DESCRIPTION)
    ck.wait()
  _damage(os.path.join(wd, "checkpoints", "grpo", "3"))
  with checkpoints.Checkpoints(wd, "grpo") as ck:
    with pytest.raises(checkpoints.DamagedCheckpoint) as e:
      ck.restore_intact(STATE, DESCRIPTION)
  msg = str(e.value)
  assert "every checkpoint of grpo is damaged" in msg and "grpo/3 is damaged" in msg
  assert "good" not in msg and "\n" not in msg and len(msg) < 1000
  with checkpoints.Checkpoints(wd, "grpo") as ck:    # a fresh start is possible
    assert ck.restore_intact(STATE, DESCRIPTION) == (None, STATE)
