"""Tests for vsr_jax.stages (base.py): the sharing keys (two runs with equal keys train the same
stage), checkpoint folders, finished stages, naming checkpoints to evaluate, and the loop's
machinery on a toy loop (late metrics, batches made ahead, profile traces, background saves).
Training itself: test_train.py."""
import functools
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from orbax.checkpoint._src.checkpointers import async_checkpointer

from vsr_jax import checkpoints, config_lib, registry, stages
from vsr_jax.stages import base
from vsr_jax.workdir import WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def keys(**overrides):
  return stages.stage_keys(config_lib.load(SMOKE, {k: str(v) for k, v in overrides.items()}))


@pytest.mark.parametrize("field, value, changed", [
    ("eval.turns", 3, set()),                                  # evaluation only
    ("index.backend", "scann", set()),
    ("log.every_steps", 3, set()),
    ("agent.num_latents", 1, {"sft", "sft_hqr", "grpo"}),       # every soft-token point shares 0
    ("sft.ret_weight", 0.5, {"sft", "sft_hqr", "grpo"}),
    ("grpo.advantage", "rloo", {"grpo"}),
    ("grpo.rewards.answer", 0.0, {"grpo"}),
    ("engine.train.fine_keep", 0.5, {"engine", "sft", "sft_hqr", "grpo"}),
    ("data.synthetic.noise", 0.4, {"engine", "sft", "sft_hqr", "grpo"}),
    ("seed", 1, {"engine", "sft", "sft_hqr", "grpo"}),
])
def test_stage_keys_change_with_what_a_stage_trains(field, value, changed):
  base, other = keys(), keys(**{field: value})
  assert set(base) == {"engine", "sft", "sft_hqr", "grpo"}
  assert {s for s in base if base[s] != other[s]} == changed


def test_folders_of_the_two_phase_engine():
  config = config_lib.load(SMOKE, {"engine.train.text_only_steps": "10"})
  assert registry.STAGES.get("engine").folders(config) == [("engine", 20), ("engine_text", 10)]
  assert stages.folder_owner(config, "engine_text") == "engine"
  assert stages.folder_owner(config, "grpo") == "grpo"
  assert stages.folder_owner(config, "nope") is None


def test_finished_and_available(tmp_path):
  config = config_lib.load(SMOKE)
  folder = tmp_path / "checkpoints" / "sft"
  folder.mkdir(parents=True)
  (folder / "15").mkdir()
  assert not stages.finished(config, str(tmp_path), "sft")
  (folder / "20").mkdir()
  assert stages.finished(config, str(tmp_path), "sft")
  assert stages.available(str(tmp_path)) == "; saved: sft at steps 15, 20"
  assert stages.available(str(tmp_path / "none")) == "; the workdir holds no checkpoint"


def test_parse_checkpoint_names_what_exists(tmp_path):
  (tmp_path / "checkpoints" / "sft" / "20").mkdir(parents=True)
  config = config_lib.load(SMOKE, {"eval.checkpoint": "sft:20"})
  assert stages.parse_checkpoint(config, str(tmp_path)) == {"sft": 20}
  assert stages.parse_checkpoint(config_lib.load(SMOKE), str(tmp_path)) == {}
  bad = config_lib.load(SMOKE, {"eval.checkpoint": "sfft:20"})
  with pytest.raises(WorkdirError, match="no stage of this run writes a checkpoint folder 'sfft'"
                                         "; saved: sft at steps 20"):
    stages.parse_checkpoint(bad, str(tmp_path))


def test_a_dataset_read_from_a_folder_keys_the_engine_by_that_folder():
  def engine_key(folder):
    return keys(**{"data.source": "files", "data.dir": folder,
                   "engine.train.source": "train"})["engine"]
  assert engine_key("/a") != engine_key("/b")
  assert keys(**{"data.dir": "/a"})["engine"] == keys(**{"data.dir": "/b"})["engine"]  # generated


# ------------------------------------------------------------------------ the loop, on a toy

def toy_loop(poison=None, steps=12, calls=None):
  """w moves toward each batch's mean; the batch of step `poison` is NaN."""
  state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.zeros(3)},
                                        tx=optax.sgd(0.5))

  def batch_fn(step, state):
    del state
    x = np.full((8, 3), float(step), np.float32)
    return {"x": x * np.float32(np.nan) if step == poison else x}

  @functools.partial(jax.jit, donate_argnums=0)
  def step_fn(state, batch, rng):
    del rng
    grads = {"w": state.params["w"] - batch["x"].mean(0)}
    return state.apply_gradients(grads=grads), {"loss": jnp.sum(grads["w"] ** 2),
                                                "one": jnp.float32(1.0)}

  def counted(state, batch, rng):
    if calls is not None:
      calls.append(int(state.step))
    return step_fn(state, batch, rng)

  return base.Loop(folder="toy", steps=steps, state=state, description={"stage": "toy",
                                                                         "fields": {}},
                   step_fn=counted, batch_fn=batch_fn, reads_state=lambda step: False)


def toy_context(workdir, **overrides):
  config = config_lib.load(SMOKE, {"checkpoint.every_steps": "4", "log.every_steps": "100",
                                   "log.progress_seconds": "1e9",
                                   **{k: str(v) for k, v in overrides.items()}})
  return base.Context(config, str(workdir), tokenizer=None, splits={}, engine=None)


@pytest.mark.parametrize("poison", [5, 7])
def test_late_metrics_stop_at_the_non_finite_step_and_save_nothing_after_it(tmp_path, poison):
  """Metrics are fetched only at checkpoints here (no log step, no progress line before the
  end): the NaN of step 5 is seen at the step-8 checkpoint, step 7's just before its own;
  either way the error names that step and term, and the step-8 checkpoint is never written."""
  calls = []
  with pytest.raises(base.NonFiniteError,
                     match=rf"toy step {poison}: loss is nan; stopped\. The last good "
                           rf"checkpoint in .*checkpoints/toy is kept \(step 4\)"):
    base.run_loop(toy_loop(poison, calls=calls), toy_context(tmp_path))
  assert calls == list(range(8))              # seen late: steps up to 7 were dispatched
  ckpt = checkpoints.Checkpoints(str(tmp_path), "toy")
  assert ckpt.all_steps() == [4]
  ckpt.close()


def test_a_finite_loop_checkpoints_and_resumes_to_the_same_state(tmp_path):
  straight = base.run_loop(toy_loop(), toy_context(tmp_path / "a", **{"log.every_steps": 1}))
  with pytest.raises(base.NonFiniteError, match="toy step 9"):
    base.run_loop(toy_loop(poison=9), toy_context(tmp_path / "b"))
  resumed = base.run_loop(toy_loop(), toy_context(tmp_path / "b"))     # from step 8
  assert int(resumed.step) == 12
  np.testing.assert_array_equal(resumed.params["w"], straight.params["w"])


def test_batches_made_ahead_are_the_sequential_batches():
  """State-reading steps (multiples of 4, and the first) are made in turn on the caller's
  thread with the state; the steps between are made ahead by a thread, never past the next
  state-reading step; an error there is raised at its own step."""
  seen = []

  def batch_fn(step, state):
    seen.append((step, state, threading.current_thread() is threading.main_thread()))
    if step == 11:
      raise KeyboardInterrupt("killed at 11")
    reads_it = step == 1 or reads(step)
    return {"x": np.arange(3) * step + (1000 * state if reads_it else 0)}

  def reads(step):
    return step % 4 == 0

  def drain(depth):
    seen.clear()
    got = []
    batches = base.Batches(batch_fn, reads, lambda b: b, start=1, end=14, depth=depth)
    for step in range(1, 11):
      got.append(batches.get(step, step * 10))        # the state before step `step`
      time.sleep(0.01)                                 # the thread runs ahead meanwhile
    with pytest.raises(KeyboardInterrupt, match="killed at 11"):
      batches.get(11, 110)
    batches.close()
    return got, sorted(seen)

  sequential, calls = drain(depth=0)
  ahead, ahead_calls = drain(depth=2)
  for x, y in zip(sequential, ahead):
    np.testing.assert_array_equal(x["x"], y["x"])
  assert [c[:2] for c in ahead_calls if c[1] is not None] == [(1, 10), (4, 40), (8, 80)]
  assert all(main == (state is not None) for _, state, main in ahead_calls)
  assert max(s for s, _, _ in ahead_calls) <= 11       # never past the kill (queue depth)
  assert all(c[2] for c in calls)                      # depth 0: all in turn


def test_profile_steps_write_a_trace(tmp_path):
  base.run_loop(toy_loop(steps=5), toy_context(tmp_path, **{"log.profile_steps": "1:3"}))
  traces = [f for _, _, files in os.walk(tmp_path / "profile" / "toy") for f in files]
  assert any(f.endswith(".xplane.pb") for f in traces), traces


def test_the_loop_returns_after_its_background_saves_land(tmp_path, monkeypatch):
  real = async_checkpointer._background_wait_for_commit_futures

  def slow(*args, **kwargs):
    time.sleep(0.3)
    return real(*args, **kwargs)

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", slow)
  base.run_loop(toy_loop(), toy_context(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints" / "toy")) == ["12", "8"]   # max_to_keep 2


@pytest.mark.parametrize("steps", [4, 12])    # seen by the last save's wait / the next save
def test_a_failed_background_save_is_the_loop_s_error(tmp_path, monkeypatch, steps):
  def failing(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(async_checkpointer, "_background_wait_for_commit_futures", failing)
  with pytest.raises(OSError, match="disk full"):
    base.run_loop(toy_loop(steps=steps), toy_context(tmp_path))


def test_engine_loops_make_their_initial_state_under_jit():
  """Stage 0's joint and text-only phases describe their state by a pure init (shaped by
  jax.eval_shape, made in a sharded jit), not a host-made state; the text-only phase starts
  from the joint phase's text parameters as they are."""
  import types   # pylint: disable=g-import-not-at-top
  from vsr_jax.engine import towers   # pylint: disable=g-import-not-at-top
  config = config_lib.load(SMOKE, {"engine.train.text_only_steps": "2"})
  engine = towers.build_engine(config, 64)
  ctx = types.SimpleNamespace(config=config, engine=engine, splits={}, tokenizer=None)
  stage = registry.STAGES.get("engine")
  loop = stage.loop(ctx)
  assert loop.state is None and loop.init is not None
  shapes = loop.abstract_state()
  made = loop.initial_state()
  assert jax.tree.map(lambda a: (a.shape, a.dtype), made) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), shapes)
  assert int(made.step) == 0 and set(made.params) == {"text", "video"}
  text_params = jax.tree.map(lambda a: a + 1.0, made.params["text"])
  text = stage.loop(ctx, text_only=True, video_params=made.params["video"],
                    text_params=text_params)
  assert text.state is None
  jax.tree.map(np.testing.assert_array_equal, text.initial_state().params["text"], text_params)
