"""End to end on the smoke preset: generate -> stage 0 -> index -> evaluate -> checkpoint ->
re-evaluate from the checkpoint; resuming an interrupted stage; bad workdirs."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from vsr_jax import calibration, checkpoints, config_lib, defaults, evaluate, stages, train
from vsr_jax import metrics as metrics_lib
from vsr_jax import workdir as workdir_lib
from vsr_jax.data import batching, sources, store
from vsr_jax.stages import grpo as grpo_stage

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
  assert "ver_auc" not in row          # no verifier: every top-1 is accepted
  # An agent row's verifier AUC, defined when its final top-1s are neither all right nor all
  # wrong.
  defined = [r for r in saved if r.startswith("agent_") and 0 < saved[r]["vr_r1"] < 1]
  assert defined and all(0.0 <= saved[r]["ver_auc"] <= 1.0 for r in defined)
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


def test_predictions_reproduce_metrics_exactly(run):
  """The reference report's recipe on the jsonl alone (METHOD.md section 7) gives metrics.json's
  numbers exactly: VR R@k, MRR and mean rank from final_rank (orig_* from orig_rank), IoU@theta
  and mIoU at R@1 from final_iou_r1, per-turn VR R@1 from turns[t].rank."""
  workdir, returned = run
  saved = workdir_lib.read_json(os.path.join(workdir, "metrics.json"))
  assert list(saved) == list(returned) == ["engine_single_shot", "agent_no_refine", "agent_hqr",
                                           "agent_sqr_stage1", "agent_sqr_stage2"]
  gated_out = 0          # turns whose positive IoU the gate zeroes
  for name in saved:
    m = saved[name]
    with open(os.path.join(workdir, "predictions", f"{name}.jsonl")) as f:
      preds = [json.loads(line) for line in f]
    assert len(preds) == m["num_queries"] == returned[name]["num_queries"]
    got = {}
    for prefix, key in (("", "final_rank"), ("orig_", "orig_rank")):
      rank = np.array([p[key] for p in preds], np.float64)
      for k in metrics_lib.RECALL_KS:
        got[f"{prefix}vr_r{k}"] = float(np.mean(rank <= k))
      got[f"{prefix}mrr"] = float(np.mean(1.0 / rank))
      got[f"{prefix}mean_rank"] = float(np.mean(rank))
    iou = np.array([p["final_iou_r1"] for p in preds], np.float64)
    for theta in metrics_lib.IOU_THRESHOLDS:
      # The metric's own slack for IoUs a few ulp under theta (metrics._IOU_TOL).
      got[f"vcmr_r1_iou{theta}"] = float(np.mean(iou >= theta - metrics_lib._IOU_TOL))
    got["miou_r1"] = float(np.mean(iou))
    for key, value in got.items():
      assert value == m[key], (name, key, value, m[key])
    turns = len(m["per_turn"])
    assert all(len(p["turns"]) == turns for p in preds)
    for t in range(turns):
      rank = np.array([p["turns"][t]["rank"] for p in preds], np.float64)
      iou = np.array([p["turns"][t]["iou_r1"] for p in preds], np.float64)
      per_turn = m["per_turn"][t]
      assert float(np.mean(rank <= 1)) == per_turn["vr_r1"], (name, t)
      assert float(np.mean(iou)) == per_turn["miou_r1"], (name, t)
      for theta in metrics_lib.IOU_THRESHOLDS:
        assert (float(np.mean(iou >= theta - metrics_lib._IOU_TOL)) ==
                per_turn[f"vcmr_r1_iou{theta}"]), (name, t, theta)
    assert m["per_turn"][-1]["vr_r1"] == m["vr_r1"]

    # The gate: a turn's iou_r1 is its IoU (iou_raw) only when it said `matched` on the ground
    # truth (rank 1), else 0; the top-level fields are the final turn's.
    for p in preds:
      assert p["final_iou_r1"] == p["turns"][-1]["iou_r1"]
      assert p["iou_raw"] == p["turns"][-1]["iou_raw"]
      assert p["final_rank"] == p["turns"][-1]["rank"]
      for tr in p["turns"]:
        counts = tr["answer"] == "matched" and tr["retrieved_video"] == p["gt_video"]
        assert counts == (tr["answer"] == "matched" and tr["rank"] == 1)
        assert tr["iou_r1"] == (tr["iou_raw"] if counts else 0.0)
        assert 0.0 <= tr["iou_raw"] <= 1.0
        gated_out += tr["iou_raw"] > 0 and not counts
  assert gated_out > 0


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
  """Killed after the step-15 checkpoint, a rerun resumes and ends with the same engine (the
  engine stage only: the later stages' resumption is the soak test's)."""
  workdir, _ = run
  partial = str(tmp_path / "partial")
  only_engine = {"stages": "('engine',)"}
  real = batching.engine_batch

  def dying(split, step, **kwargs):
    if step == 20:
      raise KeyboardInterrupt("simulated kill")
    return real(split, step, **kwargs)

  monkeypatch.setattr(batching, "engine_batch", dying)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(smoke(**only_engine), partial)
  assert not os.path.exists(os.path.join(partial, "metrics.json"))
  assert os.listdir(os.path.join(partial, "checkpoints", "engine")) == ["15"]
  monkeypatch.setattr(batching, "engine_batch", real)
  assert list(train.train_and_evaluate(smoke(**only_engine), partial)) == ["engine_single_shot"]
  config = smoke()
  resumed = jax.tree.leaves(stages.load_params(config, partial, "engine"))
  straight = jax.tree.leaves(stages.load_params(config, workdir, "engine"))
  for x, y in zip(resumed, straight):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_eval_without_checkpoint_is_an_error(tmp_path):
  config = smoke()
  workdir = str(tmp_path / "w")
  workdir_lib.prepare(config, workdir, mode="train")
  with pytest.raises(workdir_lib.WorkdirError, match="no engine checkpoint"):
    train.evaluate_workdir(config, workdir)


# Orbax leaves an un-awaited read coroutine behind when a restore fails on a shape mismatch.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("field, value, needle", [
    ("engine.text.mlp_dim", 48, "another structure or shapes"),
    ("agent.latent_eps", 0.5, "agent.latent_eps: checkpoint 1.0, this run 0.5"),
    ("engine.text.kind", "scratch2", None)])
def test_checkpoint_of_an_incompatible_config_is_an_error(run, tmp_path, field, value, needle):
  """Checkpoints whose parameters have other shapes, or mean something else (a
  meaning-changing field of the stage): refused, naming the field and both values."""
  workdir, _ = run
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  if needle is None:      # an unknown registered name is a config error first
    with pytest.raises(config_lib.ConfigError, match="no text tower of that name"):
      train.evaluate_workdir(smoke(**{field: value}), other)
    return
  config = smoke(**{field: value})
  os.remove(os.path.join(other, "config.json"))
  workdir_lib.prepare(config, other, mode="train")
  with pytest.raises(workdir_lib.WorkdirError, match=needle):
    train.evaluate_workdir(config, other)


def test_a_training_only_field_does_not_orphan_checkpoints(run, tmp_path):
  """A field that changes how a stage trains, not what its parameters mean (sft.ret_weight):
  the checkpoints still evaluate (before, every checkpoint carried whole config sections)."""
  workdir, metrics = run
  other = str(tmp_path / "other")
  shutil.copytree(workdir, other)
  config = smoke(**{"sft.ret_weight": 0.5, "eval.rows": str({
      "agent_sqr_stage1": dict(kind="agent", stage="sft", turns=0, refine="")})})
  os.remove(os.path.join(other, "config.json"))
  workdir_lib.prepare(config, other, mode="train")
  got = train.evaluate_workdir(config, other)
  assert got["agent_sqr_stage1"] == metrics["agent_sqr_stage1"]


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
  ckpt = checkpoints.Checkpoints(workdir, "engine")
  assert ckpt.latest_step() == 15
  assert ckpt.description(15)["stage"] == "engine"


def test_two_phase_engine_keeps_the_joint_video_tower(tmp_path):
  """text_only_steps > 0: the 'engine_text' phase retrains the text tower only; the finished
  engine restores from both phases' checkpoints."""
  config = smoke(**{"engine.train.text_only_steps": 10, "stages": "('engine',)"})
  workdir = str(tmp_path / "two")
  train.train_and_evaluate(config, workdir)
  joint = stages.load_params(config, workdir, "engine", at={"engine": 20})
  final = stages.load_params(config, workdir, "engine")
  for a, b in zip(jax.tree.leaves(final["video"]), jax.tree.leaves(joint["video"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
           for a, b in zip(jax.tree.leaves(final["text"]), jax.tree.leaves(joint["text"]))]
  assert max(moved) > 1e-6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["engine", "engine_text"]


def test_stage_two_without_a_stage_one_checkpoint_is_refused_before_compiling(tmp_path,
                                                                              monkeypatch):
  calls = []
  monkeypatch.setattr(sources, "load_data", lambda *a, **k: calls.append(1))
  config = smoke(stages="('engine', 'grpo')")
  with pytest.raises(workdir_lib.WorkdirError, match=r"checkpoints/sft holds no finished"):
    train.train_and_evaluate(config, str(tmp_path / "g"))
  assert not calls                      # nothing was generated, trained or compiled


@pytest.mark.parametrize("balanced", [True, False])
def test_grpo_queries_balance_right_and_wrong_first_retrievals(balanced):
  first_hit = np.zeros(1000, bool)
  first_hit[::10] = True                                  # 10 % right, as on the train split
  cfg = smoke(**{"grpo.batch_size": 8, "grpo.balanced": balanced}).grpo
  queries = grpo_stage.grpo_queries(first_hit, cfg, seed=0)
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
  queries = grpo_stage.grpo_queries(np.zeros(50, bool), cfg, seed=0)
  assert "GRPO samples queries uniformly" in caplog.text
  assert len(set(queries(0))) == 8


# ------------------------------------------------------------- evaluating a trained run

def files_digest(workdir):
  """{path: sha1} of every file of a run except its evals/ (what an evaluation may add)."""
  import hashlib
  out = {}
  for root, dirs, files in os.walk(workdir):
    dirs[:] = [d for d in dirs if os.path.join(root, d) != os.path.join(workdir, "evals")]
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
  return out


def cli(*args):
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-m", "vsr_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  return proc.returncode, proc.stdout, proc.stderr


def test_eval_name_reproduces_the_run_and_leaves_it_untouched(run):
  """--mode=eval from the run's own config.json (no config file), into evals/NAME, with the
  episodes' frames left on the host (eval.frame_store=host: read per retrieved video through
  a callback): the same metrics.json, bit for bit, and not one byte of the run's own files
  changes. (test_eval_mode_reproduces_metrics: the same without any override.)"""
  workdir, _ = run
  before = files_digest(workdir)
  code, _, err = cli(f"--workdir={workdir}", "--mode=eval", "--eval_name=again",
                     "--config.eval.frame_store=host")
  assert code == 0, err[-2000:]
  with open(os.path.join(workdir, "metrics.json"), "rb") as a, \
       open(os.path.join(workdir, "evals", "again", "metrics.json"), "rb") as b:
    assert a.read() == b.read()
  assert os.path.isfile(os.path.join(workdir, "evals", "again", "config.json"))
  assert files_digest(workdir) == before


def test_eval_with_more_turns_and_a_new_row(run):
  """Evaluation at 3 turns (training used 2), of a row described on the command line."""
  workdir, _ = run
  before = files_digest(workdir)
  rows = "{'sqr_t3': {'kind': 'agent', 'stage': 'grpo', 'turns': 0, 'refine': ''}}"
  code, out, err = cli(f"--workdir={workdir}", "--mode=eval", "--eval_name=t3",
                       "--config.eval.turns=3", f"--config.eval.rows={rows}")
  assert code == 0, err[-2000:]
  metrics = workdir_lib.read_json(os.path.join(workdir, "evals", "t3", "metrics.json"))
  assert list(metrics) == ["sqr_t3"] and len(metrics["sqr_t3"]["per_turn"]) == 3
  assert "sqr_t3" in out
  assert files_digest(workdir) == before


def test_eval_with_a_calibrated_matched_threshold(run):
  """eval.calibrate: each agent row's matched threshold chosen on another split (the smoke
  world has no val split; its train split serves), written into metrics.json; engine rows have
  none. A split the data lacks, or the eval split itself, is refused naming the field."""
  workdir, _ = run
  # Two rows (every agent row calibrates the same way; the engine row does not).
  rows = {k: smoke().eval.rows[k].to_dict() for k in ("engine_single_shot", "agent_sqr_stage2")}
  got = train.evaluate_workdir(smoke(**{"eval.calibrate": "train", "eval.rows": rows}), workdir,
                               eval_name="calibrated")
  assert list(got) == list(rows)
  for name, m in got.items():
    if name.startswith("agent"):
      assert m["verify_threshold"] in calibration.GRID, name
      assert m["go_on_threshold"] in calibration.GRID, name     # two turns: a pair
      assert m["span_sharpen"] in calibration.SHARPEN_GRID, name   # the smoke agent has one
    else:
      assert "verify_threshold" not in m and "span_sharpen" not in m, name
  # The one never-matching pass calibration runs gives each threshold's episodes exactly: its
  # score equals a greedy pass at that threshold (run here for a few).
  config = smoke()
  ctx = stages.Context.open(config, workdir)
  row = config.eval.rows["agent_sqr_stage2"]
  agent, spec = evaluate.agent_episode(ctx, "agent_sqr_stage2", row)
  split = ctx.splits[config.data.eval_split]
  corpus = evaluate.corpus_of(ctx, split, directory=None)
  params = ctx.stage_params(row.stage)
  run_at = lambda t: evaluate.greedy_turns(config, "t", agent, params, ctx.engine,
                                           ctx.engine_params, split, corpus, spec,
                                           threshold=t)[0]
  never = run_at(calibration.NEVER)
  stack = lambda turns, field: np.stack([getattr(t, field) for t in turns])
  q = np.arange(split.num_queries)
  for t in (0.3, 0.7, (0.7, 0.3)):
    direct = run_at(t)
    last, answer = calibration.final_turns(stack(never, "margin"), stack(never, "refined"), t)
    # Per query: where the episode ended, its verdict, rank and span, as the direct pass.
    np.testing.assert_array_equal(last, stack(direct, "active").sum(0) - 1)
    np.testing.assert_array_equal(answer, direct[-1].answer)
    np.testing.assert_array_equal(stack(never, "rank")[last, q], direct[-1].rank)
    np.testing.assert_array_equal(stack(never, "pred_time")[last, q], direct[-1].pred_time)
    # Both kinds of episode occur: some end at turn 1, some go on (else nothing is tested).
    assert (last == 0).any() and (last > 0).any(), t
    want = metrics_lib.fig_metrics(final_rank=direct[-1].rank, orig_rank=direct[0].rank,
                                   answer=direct[-1].answer, pred_time=direct[-1].pred_time,
                                   gt_time=split.times)[calibration.METRIC]
    assert evaluate.calibration_score(never, split, t) == want, t
  # A sharper span prior changes the spans only: the same episodes (so final_turns holds for
  # it as above), other pred_times.
  sharp = evaluate.greedy_turns(config, "t", agent, params, ctx.engine, ctx.engine_params,
                                split, corpus, spec, threshold=calibration.NEVER, sharpen=10.0)[0]
  for field in ("margin", "rank", "refined", "retrieved"):
    np.testing.assert_array_equal(stack(sharp, field), stack(never, field))
  assert (stack(sharp, "pred_time") != stack(never, "pred_time")).any()
  with pytest.raises(store.DatasetError, match=r"split 'val': missing annotation file"):
    train.evaluate_workdir(smoke(**{"eval.calibrate": "val"}), workdir, eval_name="nocal")
  assert not os.path.exists(os.path.join(workdir, "evals", "nocal", "metrics.json"))
  # A training run loads it at the start: the error comes before anything trains.
  fresh = os.path.join(os.path.dirname(workdir), "cal_fresh")
  with pytest.raises(store.DatasetError, match=r"split 'val': missing annotation file"):
    train.train_and_evaluate(smoke(**{"eval.calibrate": "val"}), fresh)
  assert not os.path.exists(os.path.join(fresh, "config.json"))
  with pytest.raises(config_lib.ConfigError, match=r"config.eval.calibrate='test': expected a "
                                                   r"held-out split"):
    defaults.validate(smoke(**{"eval.calibrate": "test"}))


def test_eval_from_disk_with_scann_bound_ranks_says_so_in_metrics(run):
  """The corpus as a memory map on disk (data.features_on_disk), the episodes' frames read
  per retrieved video (eval.frame_store=host) and index.backend=scann searching every leaf
  with an exact reorder: the exact in-memory run's metrics; with beyond='bound' every row's
  metrics.json entry says what ranks past the list were reported as."""
  pytest.importorskip("scann")
  workdir, _ = run
  config = workdir_lib.read_config(workdir)
  cfg = config_lib.set_values(config.copy_and_resolve_references(), {
      "index.backend": "scann", "index.scann.beyond": "bound", "index.scann.num_leaves": 2,
      "index.scann.num_leaves_to_search": 2, "index.scann.reorder": 1000,
      "index.scann.threads": 1, "data.features_on_disk": True, "eval.frame_store": "host"})
  got = train.evaluate_workdir(cfg, workdir, eval_name="scann_bound")
  cache = os.path.join(workdir, "data", "cache")
  assert any(f.endswith(".npy") for f in os.listdir(cache)), os.listdir(cache)
  final = workdir_lib.read_json(os.path.join(workdir, "metrics.json"))
  assert list(got) == list(final)
  for name, metrics in got.items():
    # The list's depth is min(100, corpus size): the smoke test split's 64 videos, plus one.
    assert metrics.pop("ranks_past_list_reported_as") == 65, name
    assert metrics == final[name], name


def test_eval_refuses_training_fields_and_unnamed_overrides(run):
  workdir, _ = run
  code, _, err = cli(f"--workdir={workdir}", "--mode=eval", "--eval_name=x",
                     "--config.sft.steps=5")
  assert code != 0 and "--config.sft.steps: only training reads this field" in err
  assert "Traceback" not in err
  code, _, err = cli(f"--workdir={workdir}", "--mode=eval", "--config.eval.turns=3")
  assert code != 0 and "needs --eval_name" in err
  assert not os.path.exists(os.path.join(workdir, "evals", "x"))


def test_eval_of_an_earlier_checkpoint(run):
  """eval.checkpoint=FOLDER:STEP evaluates a saved step; one that does not exist lists those
  that do."""
  workdir, _ = run
  config = workdir_lib.read_config(workdir)
  rows = {"s1": dict(kind="agent", stage="sft", turns=0, refine="")}
  at15 = config_lib.set_values(workdir_lib.read_config(workdir).copy_and_resolve_references(),
                               {"eval.checkpoint": "sft:15", "eval.rows": rows})
  got = train.evaluate_workdir(at15, workdir, eval_name="sft15")
  final = workdir_lib.read_json(os.path.join(workdir, "metrics.json"))["agent_sqr_stage1"]
  assert got["s1"]["num_queries"] == final["num_queries"]
  assert got["s1"] != final                      # another step's parameters
  for bad, needle in (("sft:7", r"sft:7: no such step; saved: .*sft at steps 15, 20"),
                      ("nope:3", r"no stage of this run writes a checkpoint folder 'nope'")):
    cfg = config_lib.set_values(config.copy_and_resolve_references(),
                                {"eval.checkpoint": bad, "eval.rows": rows})
    with pytest.raises(workdir_lib.WorkdirError, match=needle):
      train.evaluate_workdir(cfg, workdir, eval_name="bad")


def test_a_run_written_before_new_fields_resumes_and_evaluates(run, tmp_path):
  """config.json as the code before this layout wrote it (rows a tuple of names, agent.turns,
  no grpo.updates_per_batch): it resumes (every stage restored) and evaluates the same."""
  workdir, metrics = run
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old, ignore=shutil.ignore_patterns("evals"))
  saved = workdir_lib.read_json(os.path.join(old, "config.json"))
  saved["agent"]["turns"] = saved["eval"].pop("turns")
  saved["eval"]["rows"] = list(saved["eval"]["rows"])
  for field in ("submission_row", "checkpoint"):
    del saved["eval"][field]
  del saved["grpo"]["updates_per_batch"], saved["agent"]["refine"], saved["imports"]
  workdir_lib.write_json(os.path.join(old, "config.json"), saved)
  config = workdir_lib.read_config(old)
  assert config.eval.turns == 2 and list(config_lib.to_dict(config.eval.rows)) == list(metrics)
  # Today's config file of the same run: nothing to retrain, the same numbers.
  assert train.train_and_evaluate(smoke(), old) == metrics
