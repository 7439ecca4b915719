"""Tests for vsr_jax.evaluate beyond the metrics (test_metrics.py) and the end-to-end rows
(test_train.py): the engine's top-k lists and their grounding. The prediction export, which
reproduces metrics.json on its own: test_train.py (on its end-to-end run)."""

import os

import jax
import numpy as np
import pytest

from vsr_jax import config_lib, evaluate
from vsr_jax.data import sources
from vsr_jax.engine import encode, index as index_lib, towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "synthetic.py") + ":smoke"


@pytest.fixture(scope="module")
def lists_setup(tmp_path_factory):
  config = config_lib.load(SMOKE)
  workdir = str(tmp_path_factory.mktemp("eval"))
  tokenizer, splits = sources.load_data(config, workdir, splits=(config.data.eval_split,))
  split = splits[config.data.eval_split]
  engine = towers.build_engine(config, len(tokenizer))
  params = jax.jit(lambda r: towers.init_engine(engine, config, r))(jax.random.key(0))
  videos = encode.encode_videos(engine, params, split.features, split.num_frames, 32)
  index = index_lib.ExactIndex.build(videos)
  queries = encode.encode_queries(engine, params, split.tokens, 32)
  return config, engine, params, split, index, queries


def test_grounding_by_scoring_all_frames_equals_the_gather_path(lists_setup, monkeypatch):
  config, engine, params, split, index, queries = lists_setup
  all_frames = evaluate.engine_lists(config, engine, params, split, index, queries)
  monkeypatch.setattr(evaluate, "SCORE_ALL_FRAMES", 0)
  gathered = evaluate.engine_lists(config, engine, params, split, index, queries)
  np.testing.assert_array_equal(all_frames.ids, gathered.ids)
  np.testing.assert_array_equal(all_frames.times, gathered.times)
  # Grounding is not trivial here: windows differ from whole videos.
  whole = split.durations[all_frames.ids]
  assert (all_frames.times[..., 1] - all_frames.times[..., 0] < whole - 1e-3).any()
  assert (all_frames.times[..., 0] >= 0).all()
  assert (all_frames.times[..., 1] <= whole + 1e-4).all()


def test_path_metrics_count_turns_refinements_and_where_episodes_end():
  """Three queries over 3 turns: matched at turn 1; refined once, matched at turn 2; refined
  twice, last turn."""
  def turn(active, refined):
    z = np.zeros(3)
    return evaluate.Turn(rank=np.ones(3, np.int32), policy_rank=z, retrieved=z, answer=z,
                         pred_time=np.zeros((3, 2)), active=np.array(active, bool),
                         refined=np.array(refined, bool))
  got = evaluate.path_metrics([turn([1, 1, 1], [0, 1, 1]), turn([0, 1, 1], [0, 0, 1]),
                               turn([0, 0, 1], [0, 0, 0])])
  assert got["turns_used"] == pytest.approx(2.0) and got["searches"] == pytest.approx(2.0)
  assert got["refinements"] == pytest.approx(1.0)
  assert got["resolved"] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
  # The engine's single shot: one turn, one search, nothing refined.
  one = evaluate.path_metrics([evaluate.Turn(rank=np.ones(4), policy_rank=None, retrieved=None,
                                             answer=None, pred_time=None)])
  assert one == {"turns_used": 1.0, "searches": 1.0, "refinements": 0.0, "resolved": [1.0]}


def test_row_metrics_report_the_verifier_auc_per_turn_and_for_last_verdicts():
  """ver_auc: per turn over the queries that took it; overall over each query's last verdict;
  left out where a class is absent."""
  split = type("S", (), {"times": np.array([[0.0, 1.0]] * 4), "video_index": np.arange(4)})()

  def turn(rank, margin, active):
    return evaluate.Turn(rank=np.array(rank), policy_rank=np.array(rank), retrieved=np.zeros(4),
                         answer=np.array(margin) > 0, pred_time=np.array([[0.0, 1.0]] * 4),
                         active=np.array(active, bool), refined=np.zeros(4, bool),
                         margin=np.array(margin, float))
  # Turn 1: all four; right are queries 0 and 1. Turn 2: queries 2 and 3 only, both wrong.
  turns = [turn([1, 1, 5, 2], [2.0, -1.0, 0.5, -2.0], [1, 1, 1, 1]),
           turn([1, 1, 3, 4], [0.0, 0.0, 1.0, -1.0], [0, 0, 1, 1])]
  row = evaluate.RowResult(name="r", orig_rank=np.array([1, 1, 5, 2]), turns=turns,
                           vcmr=[np.zeros((0, 4))] * 4, svmr=[np.zeros((0, 4))] * 4,
                           vr=[np.zeros((0, 4))] * 4)
  got = evaluate.row_metrics(row, split)
  assert got["per_turn"][0]["ver_auc"] == pytest.approx(3 / 4)   # 2>0.5, 2>-2, -1<0.5, -1>-2
  assert "ver_auc" not in got["per_turn"][1]                       # no right top-1 there
  # Last verdicts: 2.0 (right), -1.0 (right), 1.0 (wrong), -1.0 (wrong).
  assert got["ver_auc"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
