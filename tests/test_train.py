"""End to end on the smoke preset: generate -> stage 0 -> index -> evaluate -> checkpoint ->
re-evaluate from the checkpoint; resuming an interrupted stage; bad workdirs."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vsr_jax import config_lib, train
from vsr_jax import workdir as workdir_lib
from vsr_jax.data import batching, store
from vsr_jax.engine import towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


def smoke(**overrides):
  return config_lib.load(SMOKE, {k: str(v) for k, v in overrides.items()})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("e2e") / "run")
  metrics = train.train_and_evaluate(smoke(), workdir)
  return workdir, metrics


def test_outputs_complete(run):
  workdir, metrics = run
  for name in ("config.json", "metrics.json", "tvr_submission.json",
               "predictions/engine_single_shot.jsonl", "submissions/engine_single_shot.tvr.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "engine"))) == ["15", "30"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
  assert not os.path.exists(os.path.join(workdir, ".staging"))
  saved = workdir_lib.read_json(os.path.join(workdir, "metrics.json"))
  row = saved["engine_single_shot"]
  for key in ("vcmr_r1_iou0.3", "vcmr_r1_iou0.5", "vcmr_r1_iou0.7", "miou_r1", "ver_acc", "vr_r1",
              "vr_r5", "vr_r10", "vr_r100", "mrr", "mean_rank", "orig_vr_r1"):
    assert key in row, key
    if key != "mean_rank":
      assert 0.0 <= row[key] <= 1.0
  assert len(row["per_turn"]) == 1 and row["per_turn"][0]["vr_r1"] == row["vr_r1"]
  with open(os.path.join(workdir, "predictions", "engine_single_shot.jsonl")) as f:
    preds = [json.loads(line) for line in f]
  assert len(preds) == row["num_queries"]
  for p in preds[:5]:
    for key in ("desc_id", "gt_video", "orig_rank", "final_rank", "final_iou_r1", "answer",
                "pred_time", "turns"):
      assert key in p
    assert set(p["turns"][0]) >= {"rank", "policy_rank", "iou_r1", "retrieved_video", "answer"}
  # The predictions reproduce the metrics.
  assert np.mean([p["final_rank"] == 1 for p in preds]) == pytest.approx(row["vr_r1"])
  with open(os.path.join(workdir, "tvr_submission.json")) as f:
    sub = json.load(f)
  assert set(sub) == {"video2idx", "VCMR", "SVMR", "VR"}
  assert len(sub["VCMR"]) == len(preds)
  first = sub["VCMR"][0]
  assert first["desc_id"] == preds[0]["desc_id"] and len(first["predictions"][0]) == 4


def test_eval_mode_reproduces_metrics(run):
  workdir, _ = run
  with open(os.path.join(workdir, "metrics.json")) as f:
    before = f.read()
  train.evaluate_workdir(smoke(), workdir)
  with open(os.path.join(workdir, "metrics.json")) as f:
    assert json.loads(f.read()) == json.loads(before)


def test_rerun_restores_instead_of_retraining(run, monkeypatch):
  workdir, metrics = run
  monkeypatch.setattr(batching, "engine_batch",
                      lambda *a, **k: pytest.fail("a finished stage must not train again"))
  assert train.train_and_evaluate(smoke(), workdir) == metrics


def test_workdir_of_another_config_is_refused(run):
  workdir, _ = run
  with pytest.raises(workdir_lib.WorkdirError, match="engine.train.steps"):
    train.train_and_evaluate(smoke(**{"engine.train.steps": 31}), workdir)


def test_interrupted_stage_resumes_exactly(run, tmp_path, monkeypatch):
  """Killed after the step-15 checkpoint, a rerun resumes and ends with the same engine."""
  workdir, _ = run
  partial = str(tmp_path / "partial")
  real = batching.engine_batch

  def dying(split, step, **kwargs):
    if step == 20:
      raise KeyboardInterrupt("simulated kill")
    return real(split, step, **kwargs)

  monkeypatch.setattr(batching, "engine_batch", dying)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(smoke(), partial)
  assert not os.path.exists(os.path.join(partial, "metrics.json"))
  assert os.listdir(os.path.join(partial, "checkpoints", "engine")) == ["15"]
  monkeypatch.setattr(batching, "engine_batch", real)
  train.train_and_evaluate(smoke(), partial)
  config = smoke()
  tok = store.load_tokenizer(os.path.join(partial, "data"), "train")
  engine = towers.build_engine(config, len(tok))
  resumed = jax.tree.leaves(train.restore_engine(config, partial, engine))
  straight = jax.tree.leaves(train.restore_engine(config, workdir, engine))
  for x, y in zip(resumed, straight):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_eval_without_checkpoint_is_an_error(tmp_path):
  config = smoke()
  workdir = str(tmp_path / "w")
  workdir_lib.prepare(config, workdir, mode="train")
  with pytest.raises(workdir_lib.WorkdirError, match="no engine checkpoint"):
    train.evaluate_workdir(config, workdir)


@pytest.mark.parametrize("field, value", [("engine.text.mlp_dim", 48),
                                          ("sft.ret_weight", 0.5)])
def test_checkpoint_of_an_incompatible_config_is_an_error(run, tmp_path, field, value):
  """A workdir whose checkpoints were made with another engine, or agents trained with another
  sft section (stage-1 and stage-2 checkpoints carry it): refused, naming the field."""
  workdir, _ = run
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  config = smoke(**{field: value})
  os.remove(os.path.join(other, "config.json"))
  workdir_lib.prepare(config, other, mode="train")
  with pytest.raises(workdir_lib.WorkdirError, match=field):
    train.evaluate_workdir(config, other)


def test_non_finite_loss_stops_naming_step_and_term(tmp_path, monkeypatch):
  real = batching.engine_batch

  def poisoned(split, step, **kwargs):
    batch = real(split, step, **kwargs)
    if step == 17:
      batch["features"] = batch["features"] * np.float32(np.nan)
    return batch

  monkeypatch.setattr(batching, "engine_batch", poisoned)
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteError, match=r"engine step 17: \w+ is nan"):
    train.train_and_evaluate(smoke(), workdir)
  # The last good checkpoint (step 15) is intact and restorable.
  ckpt = workdir_lib.Checkpoints(workdir, "engine")
  assert ckpt.latest_step() == 15
  assert ckpt.description(15)["engine"]["train"]["steps"] == 30


def test_two_phase_engine_keeps_the_joint_video_tower(tmp_path):
  """text_only_steps > 0: the 'engine_text' phase retrains the text tower only; the finished
  engine restores from both phases' checkpoints."""
  config = smoke(**{"engine.train.text_only_steps": 10, "stages": "('engine',)",
                    "eval.rows": "('engine_single_shot',)"})
  workdir = str(tmp_path / "two")
  train.train_and_evaluate(config, workdir)
  vocab = len(train.load_data(config, workdir)[0])
  engine = towers.build_engine(config, vocab)
  joint = train.restore_params(config, workdir, "engine", train._engine_state(config, engine),
                               train.engine_description(config, vocab), 20)
  final = train.restore_engine(config, workdir, engine)
  for a, b in zip(jax.tree.leaves(final["video"]), jax.tree.leaves(joint["video"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(final["text"]), jax.tree.leaves(joint["text"]))]
  assert max(moved) > 1e-6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["engine", "engine_text"]


def test_stage_two_without_a_stage_one_checkpoint_is_refused_before_compiling(tmp_path,
                                                                              monkeypatch):
  calls = []
  monkeypatch.setattr(train, "load_data", lambda *a, **k: calls.append(1))
  config = smoke(stages="('engine', 'grpo')")
  with pytest.raises(workdir_lib.WorkdirError, match=r"checkpoints/sft holds no checkpoint"):
    train.train_and_evaluate(config, str(tmp_path / "g"))
  assert not calls                      # nothing was generated, trained or compiled


@pytest.mark.parametrize("balanced", [True, False])
def test_grpo_queries_balance_right_and_wrong_first_retrievals(balanced):
  first_hit = np.zeros(1000, bool)
  first_hit[::10] = True                                  # 10 % right, as on the train split
  cfg = smoke(**{"grpo.batch_size": 8, "grpo.balanced": balanced}).grpo
  queries = train.grpo_queries(first_hit, cfg, seed=0)
  batches = [queries(step) for step in range(200)]
  assert all(len(q) == 8 and len(set(q)) == 8 for q in batches)
  np.testing.assert_array_equal(queries(7), batches[7])   # deterministic in the step
  right = np.mean([first_hit[q].mean() for q in batches])
  if balanced:
    assert all(first_hit[q].sum() == 4 for q in batches)
  else:
    assert 0.05 < right < 0.15


def test_grpo_queries_without_a_right_first_retrieval_fall_back_to_uniform(caplog):
  cfg = smoke(**{"grpo.batch_size": 8}).grpo
  assert cfg.balanced
  queries = train.grpo_queries(np.zeros(50, bool), cfg, seed=0)
  assert "GRPO samples queries uniformly" in caplog.text
  assert len(set(queries(0))) == 8
