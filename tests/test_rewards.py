"""Tests for vsr_jax.objectives.rewards on a hand-made episode with hand-computed rewards."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vsr_jax.agent.policy import MATCHED as M, NOT_MATCHED as N
from vsr_jax.config_lib import ConfigError
from vsr_jax.objectives import rewards

TAU = 0.5
KEYS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)   # positive first


def unit(deg):
  return [np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))]


def episode():
  """T = 3 turns, B = 5 queries, as `rollout.episode` records them (finished episodes carry
  their last turn). Per query:
    0: t1 right video, matched                             answer +1       IoU 0.5
    1: t1 wrong/not (+1), t2 right/not (-1), t3 right/matched (+1): 1/3   IoU 1/3
    2: t1 right/not (-1), t2 wrong/matched (-1)            answer -1       0 (wrong video)
    3: t1 right/not (-1), t2, t3 wrong/not (+1, +1)        answer 1/3      0.5 (correct not)
    4: t1 right/not (-1), t2 right/matched (+1), t3 carried: 0 (not 1/3)   IoU 0 (disjoint)
  """
  T = 3
  gt = np.array([3, 5, 7, 9, 2])
  retrieved = np.array([[3, 3, 3], [2, 5, 5], [7, 1, 1], [9, 4, 4], [2, 2, 2]]).T
  verdict = np.array([[M, M, M], [N, N, M], [N, M, M], [N, N, N], [N, M, M]]).T
  active = np.array([[1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]], bool).T
  pred_time = np.full((T, 5, 2), 9.0, np.float32)
  pred_time[-1] = [[2.0, 6.0], [0.5, 1.5], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
  pred_time[:, 0] = pred_time[-1, 0]          # query 0 finished at turn 1 (carried)
  gt_time = np.array([[3.0, 8.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [2.0, 3.0]], np.float32)
  final = np.array([unit(a) for a in (0, 90, 30, 180, 45)], np.float32)
  orig = np.array([unit(a) for a in (90, 90, 0, 135, 45)], np.float32)
  steps = {"retrieved": retrieved, "verdict": verdict, "active": active,
           "pred_time": pred_time, "final_query": final, "orig_query": orig}
  batch = {"gt": gt, "gt_time": gt_time, "ret_keys": np.broadcast_to(KEYS, (5, 3, 2))}
  steps = {k: jnp.asarray(v) for k, v in steps.items()}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  return steps, batch


def cfg(not_matched_iou=0.5, vcmr_iou=0.5, **weights):
  return ml_collections.ConfigDict({"temperature": TAU, "not_matched_iou": not_matched_iou,
                                    "vcmr_iou": vcmr_iou, "rewards": weights})


def p_positive(deg):
  """Softmax probability of KEYS[0] for the unit query at `deg` degrees, temperature TAU."""
  c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
  logits = np.array([c, s, -c]) / TAU
  return np.exp(logits[0]) / np.exp(logits).sum()


ANSWER = [1.0, 1 / 3, -1.0, 1 / 3, 0.0]
IOU = [0.5, 1 / 3, 0.0, 0.5, 0.0]


def test_answer_is_the_mean_over_turns_taken():
  steps, batch = episode()
  np.testing.assert_allclose(rewards.answer(steps, batch, cfg()), ANSWER, rtol=1e-6)


def test_answer_with_no_turn_taken_is_zero():
  steps, batch = episode()
  steps["active"] = jnp.zeros_like(steps["active"])
  np.testing.assert_array_equal(rewards.answer(steps, batch, cfg()), 0.0)


def test_grounding_iou():
  steps, batch = episode()
  np.testing.assert_allclose(rewards.grounding_iou(steps, batch, cfg()), IOU, rtol=1e-6)


def test_grounding_credit_for_a_correct_not_matched_is_configurable():
  """not_matched_iou = 0: an episode that ends without an answer earns no grounding reward."""
  steps, batch = episode()
  final_not_matched = np.asarray(steps["verdict"][-1]) != 0
  got = np.asarray(rewards.grounding_iou(steps, batch, cfg(not_matched_iou=0.0)))
  want = np.where(final_not_matched, 0.0, IOU)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert (np.asarray(IOU)[final_not_matched] == 0.5).any()    # the case is exercised


def test_grounding_iou_degenerate_spans():
  steps, batch = episode()
  # Query 0 (correctly matched): a point prediction inside the moment has IoU 0; the exact
  # moment has IoU 1.
  pt = np.array(steps["pred_time"])
  pt[-1, 0] = [5.0, 5.0]
  steps["pred_time"] = jnp.asarray(pt)
  assert float(rewards.grounding_iou(steps, batch, cfg())[0]) == 0.0
  pt[-1, 0] = [3.0, 8.0]
  steps["pred_time"] = jnp.asarray(pt)
  assert float(rewards.grounding_iou(steps, batch, cfg())[0]) == pytest.approx(1.0)


def test_vcmr_counts_what_the_metric_counts():
  """Final matched on the right video with IoU >= vcmr_iou: query 0 (IoU 0.5); query 1's 1/3
  counts at 0.3 only; a wrong video (2), a final not_matched (3) and IoU 0 (4) never."""
  steps, batch = episode()
  np.testing.assert_array_equal(rewards.vcmr(steps, batch, cfg()), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(rewards.vcmr(steps, batch, cfg(vcmr_iou=0.3)), [1, 1, 0, 0, 0])
  total, parts = rewards.total_reward(steps, batch, cfg(vcmr=2.0, answer=0.0))
  np.testing.assert_array_equal(total, [2, 0, 0, 0, 0])
  assert set(parts) == {"vcmr"}


def test_retrieval_exp_neg_ret_is_the_positive_probability():
  steps, batch = episode()
  got = np.asarray(rewards.retrieval_exp_neg_ret(steps, batch, cfg()))
  np.testing.assert_allclose(got, [p_positive(a) for a in (0, 90, 30, 180, 45)], rtol=1e-5)
  assert got[0] > 0.7 and got[3] < 0.02


def test_retrieval_delta_p():
  steps, batch = episode()
  got = np.asarray(rewards.retrieval_delta_p(steps, batch, cfg()))
  expect = [p_positive(a) - p_positive(b) for a, b in zip((0, 90, 30, 180, 45),
                                                          (90, 90, 0, 135, 45))]
  np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
  assert got[0] > 0 and got[2] < 0 and got[4] == 0.0


def test_total_reward_weights():
  steps, batch = episode()
  c = cfg(answer=1.2, grounding_iou=0.45, retrieval_exp_neg_ret=0.8, retrieval_delta_p=0.0)
  total, parts = rewards.total_reward(steps, batch, c)
  ret = np.array([p_positive(a) for a in (0, 90, 30, 180, 45)])
  np.testing.assert_allclose(total, 1.2 * np.array(ANSWER) + 0.45 * np.array(IOU) + 0.8 * ret,
                             rtol=1e-5)
  assert set(parts) == {"answer", "grounding_iou", "retrieval_exp_neg_ret"}   # 0 is off
  np.testing.assert_allclose(parts["answer"], ANSWER, rtol=1e-6)
  total, parts = rewards.total_reward(steps, batch, cfg(retrieval_delta_p=2.0))
  np.testing.assert_allclose(total, 2.0 * np.asarray(rewards.retrieval_delta_p(steps, batch, c)),
                             rtol=1e-6)
  assert set(parts) == {"retrieval_delta_p"}


def test_total_reward_unknown_name():
  steps, batch = episode()
  with pytest.raises(ConfigError, match="config.grpo.rewards.format='format': no reward of that "
                     "name"):
    rewards.total_reward(steps, batch, cfg(answer=1.0, format=0.5))
  # Even a switched-off unknown reward is an error (a typo would otherwise pass silently).
  with pytest.raises(ConfigError, match="did you mean 'answer'"):
    rewards.total_reward(steps, batch, cfg(anwser=0.0))
