"""Tests for vsr_jax.api (the notebook API) and experiments/inspect_run.ipynb, on one smoke
run of the engine and the SQR agent (grpo and sft_hqr are left out: they would double the
run's ~40 s of training and replay through the same code paths)."""

import json
import os
import sys

import nbclient
import nbformat
import numpy as np
import pytest

from vsr_jax import api, config_lib, train
from vsr_jax.workdir import WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"
NOTEBOOK = os.path.join(REPO, "experiments", "inspect_run.ipynb")
ROWS = ("engine_single_shot", "agent_no_refine", "agent_sqr_stage1")   # the run's rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("api") / "run")
  train.train_and_evaluate(config_lib.load(SMOKE, {"stages": "('engine', 'sft')"}), path)
  return path


@pytest.fixture(scope="module")
def run(workdir):
  return api.load(workdir)


def predictions(workdir, row):
  with open(os.path.join(workdir, "predictions", f"{row}.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_run_lists_its_rows_and_metrics(run):
  assert run.trained_rows == list(ROWS)
  assert set(run.metrics) == set(ROWS)
  assert 0 <= run.metrics["agent_sqr_stage1"]["vr_r1"] <= 1


def test_search_ranks_true_videos_as_evaluation_did(run, workdir):
  V = run.split.num_videos
  hits = run.search("a person opens a door", k=10)
  assert [h.rank for h in hits] == list(range(1, 11))
  scores = [h.score for h in hits]
  assert scores == sorted(scores, reverse=True)
  assert len({h.video_id for h in hits}) == 10
  # The whole corpus ranked (k = V): every test query's true video where evaluation put it.
  for record in predictions(workdir, "engine_single_shot"):
    ranked = [h.video_id for h in run.search(record["query"], k=V)]
    assert ranked.index(record["gt_video"]) + 1 == record["orig_rank"], record["desc_id"]
  # A desc_id searches with its query's tokens: the same list as its text.
  assert run.search(record["desc_id"], k=5) == run.search(record["query"], k=5)


@pytest.mark.parametrize("row", ROWS)
def test_episode_replays_its_prediction_record(run, workdir, row):
  records = predictions(workdir, row)
  T = len(records[0]["turns"])
  for record in records[:30]:
    ep = run.episode(record["desc_id"], row=row)
    mine = ep.record()
    for key in ("gt_video", "orig_rank", "final_rank", "answer", "retrieved_video",
                "pred_time", "query"):
      assert mine[key] == record[key], (row, record["desc_id"], key)
    for t, (a, b) in enumerate(zip(mine["turns"], record["turns"], strict=True)):
      for key in ("rank", "retrieved_video", "answer", "pred_time"):
        assert a[key] == b[key], (row, record["desc_id"], t, key)
      assert a["iou_r1"] == pytest.approx(b["iou_r1"])
      if b["retrieved_video"] == record["gt_video"]:
        assert a["iou_raw"] == pytest.approx(b["iou_raw"])
    # Turns end at the first 'matched'; the verifier's probability agrees with its verdict.
    assert 1 <= len(ep.turns) <= T == ep.max_turns
    assert all(t.verdict == "not_matched" for t in ep.turns[:-1])
    for t in ep.turns:
      assert (t.p_matched > 0.5) == (t.verdict == "matched")
      assert len(t.frame_scores) == run.split.num_frames[t.video_index]
      assert (t.gt_time is not None) == (t.video_id == ep.gt_video)


def test_episode_replays_the_calibrated_thresholds_of_its_evaluation(workdir, tmp_path):
  """A run evaluated with eval.calibrate: the episode takes the row's thresholds (go-on,
  final) and span sharpness from metrics.json, as evaluation ran it (here written into a
  copy's metrics.json by hand; evaluate.greedy_turns at the same values is the reference)."""
  import shutil
  from vsr_jax import evaluate
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  path = os.path.join(copy, "metrics.json")
  metrics = json.load(open(path))
  metrics["agent_sqr_stage1"].update(go_on_threshold=0.9, verify_threshold=0.2, span_sharpen=3.0)
  json.dump(metrics, open(path, "w"))
  run = api.load(copy)
  ctx, split = run.ctx, run.split
  row = run.config.eval.rows["agent_sqr_stage1"]
  agent, spec = evaluate.agent_episode(ctx, "agent_sqr_stage1", row)
  corpus = evaluate.corpus_of(ctx, split, directory=None)
  turns, _ = evaluate.greedy_turns(run.config, "t", agent, ctx.stage_params(row.stage),
                                   ctx.engine, ctx.engine_params, split, corpus, spec,
                                   threshold=(0.9, 0.2), sharpen=3.0,
                                   queries=evaluate.split_queries(ctx, split))
  ended = np.stack([t.active for t in turns]).sum(0) - 1
  between = 0          # verdicts the argmax would give the other way (else nothing is tested)
  for i in range(20):
    ep = run.episode(int(split.desc_ids[i]), row="agent_sqr_stage1")
    assert len(ep.turns) == ended[i] + 1, i
    for t, turn in enumerate(ep.turns):
      assert turn.verdict == ("matched" if turns[t].answer[i] else "not_matched"), (i, t)
      # The verdict follows that turn's threshold, not the argmax.
      assert (turn.p_matched >= (0.9 if t + 1 < spec.turns else 0.2) - 1e-6) == (
          turn.verdict == "matched"), (i, t)
      between += (turn.p_matched > 0.5) != (turn.verdict == "matched")
    np.testing.assert_allclose(ep.final.pred_time, turns[-1].pred_time[i], atol=1e-5)
  assert between > 0


def test_free_text_episode_has_no_ground_truth(run):
  ep = run.episode("the boy paints the red rope", row="agent_sqr_stage1")
  assert ep.desc_id is None and ep.gt_video is None
  assert all(t.rank is None and t.gt_time is None and t.iou is None for t in ep.turns)
  first = run.search("the boy paints the red rope", k=1)[0]
  assert ep.turns[0].video_id == first.video_id
  assert "the boy paints" in ep.summary()


def test_plot_episode_has_one_axes_per_turn(run, workdir):
  records = predictions(workdir, "agent_sqr_stage1")
  two = next(r for r in records if r["turns"][0]["answer"] == "not_matched")
  for ep in (run.episode(two["desc_id"], row="agent_sqr_stage1"),
             run.episode(two["desc_id"], row="engine_single_shot")):
    fig = api.plot_episode(ep)
    assert len(fig.axes) == len(ep.turns) == (2 if ep.kind == "agent" else 1)
    for ax, t in zip(fig.axes, ep.turns):
      np.testing.assert_allclose(ax.lines[0].get_ydata(), t.frame_scores)
      assert t.video_id in ax.get_title()


def test_notebook_runs_top_to_bottom(workdir, monkeypatch):
  monkeypatch.setenv("VSR_RUN", workdir)     # the kernel inherits this process' environment
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                          resources={"metadata": {"path": REPO}}).execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert f"python: {sys.executable}" in text      # the venv's interpreter ran it
  assert workdir in text and "agent_sqr_stage1" in text
  assert any("image/png" in o.get("data", {}) for o in nb.cells[-1].outputs)


def test_bad_input_is_named(run, workdir, tmp_path):
  with pytest.raises(WorkdirError, match="config.json not found"):
    api.load(str(tmp_path))
  desc_id = int(run.split.desc_ids[0])
  with pytest.raises(WorkdirError, match="row 'agent_sqr_stage2' needs stage 'grpo'"):
    run.episode(desc_id, row="agent_sqr_stage2")
  with pytest.raises(config_lib.ConfigError, match="rows: engine_single_shot, agent_no_refine"):
    run.episode(desc_id, row="agent_sqr")
  with pytest.raises(WorkdirError, match="desc_id 987654 is not a query of the test split"):
    run.episode(987654, row="agent_sqr_stage1")
  with pytest.raises(config_lib.InputError, match="no words"):
    run.search("  ", k=3)
  with pytest.raises(config_lib.ConfigError, match="run.search k=0 must be between 1 and"):
    run.search("a door", k=0)
  # A run that has not finished its evaluation: no metrics.json.
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  (fresh / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(WorkdirError, match=r"metrics.json not found"):
    api.load(str(fresh)).metrics
