"""Tests for vsr_jax.metrics on hand-worked cases (expected numbers derived in comments)."""
import json

import numpy as np
import pytest

from vsr_jax import metrics as M


# ----------------------------------------------------------------------------- temporal_iou


@pytest.mark.parametrize("pred, gt, expected", [
    ([0, 1], [2, 3], 0.0),          # disjoint
    ([0, 1], [1, 2], 0.0),          # touching at t=1: intersection length 0
    ([2, 4], [0, 10], 0.2),         # nested: inter 2, union 10
    ([0, 10], [2, 4], 0.2),         # symmetric
    ([1, 3], [1, 3], 1.0),          # identical
    ([0, 2], [1, 3], 1 / 3),        # partial: inter [1,2] = 1, union [0,3] = 3
    ([1, 1], [1, 1], 0.0),          # identical zero-length: union 0 -> defined 0, not NaN
    ([5, 5], [0, 10], 0.0),         # zero-length inside another: no measure
    ([-2, 2], [0, 4], 1 / 3),       # negative times are fine: inter 2, union 6
])
def test_iou_cases(pred, gt, expected):
  iou = M.temporal_iou(pred, gt)
  assert iou.dtype == np.float64
  assert iou.shape == ()
  assert float(iou) == pytest.approx(expected, abs=1e-12)


def test_iou_broadcasts():
  # pred [3, 2] against one gt [0, 4]: IoUs 1, 2/4 = 0.5 (pred [2,4]), 0 (pred [4,6] touches)
  iou = M.temporal_iou([[0, 4], [2, 4], [4, 6]], [0, 4])
  np.testing.assert_allclose(iou, [1.0, 0.5, 0.0])
  # [2, 1, 2] x [1, 3, 2] -> [2, 3]
  iou = M.temporal_iou(np.array([[0, 2], [0, 4]])[:, None], np.array([[0, 2], [0, 4], [8, 9]])[None])
  np.testing.assert_allclose(iou, [[1.0, 0.5, 0.0], [0.5, 1.0, 0.0]])


def test_iou_reversed_raises_with_index():
  with pytest.raises(ValueError, match=r"pred\[1\].*reversed"):
    M.temporal_iou([[0, 1], [3, 2], [5, 4]], [0, 4])
  with pytest.raises(ValueError, match=r"gt\[0, 1\].*reversed"):
    M.temporal_iou([0, 1], [[[0, 1], [2, 1]]])
  with pytest.raises(ValueError, match="reversed"):
    M.temporal_iou([2, 1], [0, 4])


def test_iou_rejects_nan_and_bad_shape():
  with pytest.raises(ValueError, match="non-finite"):
    M.temporal_iou([0, np.nan], [0, 4])
  with pytest.raises(ValueError, match="shape"):
    M.temporal_iou([0, 1, 2], [0, 4])


# ----------------------------------------------------------------------------- FIG


def _fig(final_rank, answer, pred_time, gt_time, orig_rank=None):
  final_rank = np.asarray(final_rank)
  return M.fig_metrics(final_rank=final_rank,
                       orig_rank=final_rank if orig_rank is None else orig_rank,
                       answer=np.asarray(answer, bool), pred_time=pred_time, gt_time=gt_time)


def test_fig_exact_threshold_counts():
  # pred [0,1] vs gt [0,2]: IoU = 1/2 exactly -> passes 0.3 and 0.5, fails 0.7.
  out = _fig([1], [True], [[0, 1]], [[0, 2]])
  assert (out["vcmr_r1_iou0.3"], out["vcmr_r1_iou0.5"], out["vcmr_r1_iou0.7"]) == (1.0, 1.0, 0.0)
  # pred [0.2,0.5] vs gt [0.2,0.8]: 0.3 / 0.6 on paper = 0.5, but float gives 0.49999999999999994.
  iou = float(M.temporal_iou([0.2, 0.5], [0.2, 0.8]))
  assert iou < 0.5  # the case really exercises the tolerance
  out = _fig([1], [True], [[0.2, 0.5]], [[0.2, 0.8]])
  assert out["vcmr_r1_iou0.5"] == 1.0
  assert out["vcmr_r1_iou0.7"] == 0.0


def test_fig_gating_and_ranks():
  # q0: right video (rank 1), matched,     IoU 1   -> VCMR hit at all thetas, mIoU 1,   VER right
  # q1: wrong video (rank 3), matched,     IoU 1   -> no hit, mIoU 0,                  VER wrong
  # q2: right video (rank 1), not_matched, IoU 1   -> no hit, mIoU 0,                  VER wrong
  # q3: wrong video (rank 2), not_matched, IoU 0.4 -> no hit, mIoU 0,                  VER right
  # q4: right video (rank 1), matched,     IoU 0.4 -> hit at 0.3 only, mIoU 0.4,       VER right
  final_rank = [1, 3, 1, 2, 1]
  orig_rank = [2, 7, 1, 150, 11]
  answer = [True, True, False, False, True]
  pred = [[0, 10], [0, 10], [0, 10], [0, 4], [0, 4]]
  gt = [[0, 10]] * 5
  out = _fig(final_rank, answer, pred, gt, orig_rank=np.asarray(orig_rank))
  expected = {
      "vcmr_r1_iou0.3": 2 / 5,            # q0, q4
      "vcmr_r1_iou0.5": 1 / 5,            # q0
      "vcmr_r1_iou0.7": 1 / 5,            # q0
      "miou_r1": (1 + 0.4) / 5,           # 0.28
      "ver_acc": 3 / 5,                   # q0, q3, q4
      "vr_r1": 3 / 5, "vr_r5": 1.0, "vr_r10": 1.0, "vr_r100": 1.0,
      "mrr": (1 + 1 / 3 + 1 + 1 / 2 + 1) / 5,   # 23/30
      "mean_rank": 8 / 5,
      # orig ranks 2, 7, 1, 150, 11: <=1: one; <=5: two; <=10: three; <=100: four.
      "orig_vr_r1": 1 / 5, "orig_vr_r5": 2 / 5, "orig_vr_r10": 3 / 5, "orig_vr_r100": 4 / 5,
      "orig_mrr": (1 / 2 + 1 / 7 + 1 + 1 / 150 + 1 / 11) / 5,
      "orig_mean_rank": 171 / 5,
      "num_queries": 5.0,
  }
  assert set(out) == set(expected)
  for k, v in expected.items():
    assert isinstance(out[k], float), k
    assert out[k] == pytest.approx(v, abs=1e-12), k


def test_fig_gated_out_query_with_zero_iou():
  # Right video, matched, but disjoint span: counted in VER, not in VCMR; mIoU 0.
  out = _fig([1, 1], [True, True], [[0, 1], [0, 2]], [[5, 6], [0, 2]])
  assert out["vcmr_r1_iou0.3"] == 0.5
  assert out["miou_r1"] == 0.5
  assert out["ver_acc"] == 1.0


def test_fig_ver_rewards_correct_rejection():
  # Ranks 1, 2, 2, all not_matched: q0 wrongly rejects the GT video, q1 and q2 correctly
  # reject a wrong video -> VER 2/3, while nothing is grounded.
  out = _fig([1, 2, 2], [False, False, False], [[0, 1]] * 3, [[0, 1]] * 3)
  assert out["ver_acc"] == pytest.approx(2 / 3)
  assert out["vcmr_r1_iou0.3"] == 0.0 and out["miou_r1"] == 0.0


@pytest.mark.parametrize("kwargs, msg", [
    (dict(final_rank=[1, 2], orig_rank=[1], answer=[True, True]), "orig_rank"),
    (dict(final_rank=[1, 0], orig_rank=[1, 1], answer=[True, True]), r"final_rank\[1\]"),
    (dict(final_rank=[1, 1.5], orig_rank=[1, 1], answer=[True, True]), "integers"),
    (dict(final_rank=[1, 1], orig_rank=[1, -3], answer=[True, True]), r"orig_rank\[1\]"),
    (dict(final_rank=[1, 1], orig_rank=[1, 1], answer=["matched", "not_matched"]), "answer"),
    (dict(final_rank=[1, 1], orig_rank=[1, 1], answer=[True, True, False]), "answer"),
    (dict(final_rank=[], orig_rank=[], answer=[]), "Q == 0"),
])
def test_fig_validation(kwargs, msg):
  q = len(kwargs["final_rank"])
  with pytest.raises(ValueError, match=msg):
    M.fig_metrics(pred_time=np.zeros((q, 2)) + [0, 1], gt_time=np.zeros((q, 2)) + [0, 1],
                  **kwargs)


def test_fig_validation_times():
  with pytest.raises(ValueError, match="pred_time"):
    M.fig_metrics(final_rank=[1], orig_rank=[1], answer=[True], pred_time=[[0, 1], [0, 1]],
                  gt_time=[[0, 1]])
  with pytest.raises(ValueError, match=r"pred\[1\].*reversed"):
    M.fig_metrics(final_rank=[1, 1], orig_rank=[1, 1], answer=[True, True],
                  pred_time=[[0, 1], [3, 2]], gt_time=[[0, 1], [0, 1]])


# ----------------------------------------------------------------------------- TVR


def _tvr_case():
  """Two queries with ties; expected numbers worked out in test_tvr_hand_case."""
  gt_video = [0, 2]
  gt_windows = [np.array([[10.0, 20.0]]), np.array([0.0, 4.0])]  # flat [2] also accepted
  vcmr = [
      np.array([
          [1, 10, 20, 0.90],  # wrong video, perfect span
          [0, 0, 5, 0.80],    # right video, IoU 0
          [0, 12, 20, 0.80],  # right video, IoU 8/10 = 0.8; ties with the row above, after it
          [0, 10, 16, 0.95],  # right video, IoU 6/10 = 0.6; top score
      ]),
      np.array([
          [2, 0, 2, 0.5],     # right video, IoU 2/4 = 0.5 exactly
          [3, 0, 4, 0.7],     # wrong video, ranked first
      ]),
  ]
  svmr = [
      np.array([
          [1, 10, 20, 0.99],  # other video: filtered out before ranking positions count
          [0, 0, 5, 0.5],     # IoU 0
          [0, 11, 19, 0.5],   # IoU 8/10 = 0.8; tie, stays second
      ]),
      np.array([[2, 0, 4, 0.3]]),  # IoU 1
  ]
  vr = [
      np.array([
          [3, 5, 1, 0.9],     # start/end are ignored for VR (even reversed)
          [5, 0, 0, 0.5],
          [0, 0, 0, 0.5],     # GT; tie with video 5, stays after it -> position 3
      ]),
      np.array([
          [7, 0, 0, 0.9],
          [7, 0, 0, 0.8],     # duplicate video is NOT deduplicated (official scorer)
          [2, 0, 0, 0.7],     # GT at position 3
      ]),
  ]
  return dict(vcmr=vcmr, svmr=svmr, vr=vr, gt_video=gt_video, gt_windows=gt_windows)


def test_tvr_hand_case():
  out = M.tvr_metrics(**_tvr_case(), ks=(1, 2, 3, 4, 5))
  # VCMR query A sorted: [0.95 IoU .6 hit@.5], [0.9 wrong video], [0.8 IoU 0], [0.8 IoU .8]
  #   -> first hit @0.5 at position 1, @0.7 at position 4 (would be 3 if ties were reordered).
  # VCMR query B sorted: [wrong video], [IoU 0.5] -> first hit @0.5 at position 2, none @0.7.
  # SVMR query A after filtering to video 0: [IoU 0], [IoU .8] -> first hit at position 2.
  # SVMR query B: first hit at position 1 for both thresholds.
  # VR A: videos 3, 5, 0 -> position 3; VR B: 7, 7, 2 -> position 3.
  expected = {
      "tvr_vcmr_r1_iou0.5": 0.5, "tvr_vcmr_r2_iou0.5": 1.0, "tvr_vcmr_r3_iou0.5": 1.0,
      "tvr_vcmr_r4_iou0.5": 1.0, "tvr_vcmr_r5_iou0.5": 1.0,
      "tvr_vcmr_r1_iou0.7": 0.0, "tvr_vcmr_r2_iou0.7": 0.0, "tvr_vcmr_r3_iou0.7": 0.0,
      "tvr_vcmr_r4_iou0.7": 0.5, "tvr_vcmr_r5_iou0.7": 0.5,
      "tvr_svmr_r1_iou0.5": 0.5, "tvr_svmr_r2_iou0.5": 1.0, "tvr_svmr_r3_iou0.5": 1.0,
      "tvr_svmr_r4_iou0.5": 1.0, "tvr_svmr_r5_iou0.5": 1.0,
      "tvr_svmr_r1_iou0.7": 0.5, "tvr_svmr_r2_iou0.7": 1.0, "tvr_svmr_r3_iou0.7": 1.0,
      "tvr_svmr_r4_iou0.7": 1.0, "tvr_svmr_r5_iou0.7": 1.0,
      "tvr_vr_r1": 0.0, "tvr_vr_r2": 0.0, "tvr_vr_r3": 1.0, "tvr_vr_r4": 1.0, "tvr_vr_r5": 1.0,
  }
  assert out == expected
  assert all(isinstance(v, float) for v in out.values())


def test_tvr_default_keys():
  out = M.tvr_metrics(**_tvr_case())
  keys = {f"tvr_{t}_r{k}_iou{th}" for t in ("vcmr", "svmr") for k in (1, 5, 10, 100)
          for th in (0.5, 0.7)} | {f"tvr_vr_r{k}" for k in (1, 5, 10, 100)}
  assert set(out) == keys


def test_tvr_top100_cut_before_svmr_filter():
  # 100 rows of another video with higher scores, then a perfect GT-video row at position 101.
  # Official: cut to top 100 first, then filter -> the GT row is never seen: R@k = 0.
  rows = np.array([[1, 0, 4, 1.0 - i * 1e-3] for i in range(100)] + [[0, 0, 4, 0.0]])
  gt = dict(gt_video=[0], gt_windows=[np.array([[0.0, 4.0]])])
  out = M.tvr_metrics(vcmr=[rows], svmr=[rows], vr=[rows], ks=(1, 100, 200), **gt)
  assert out["tvr_svmr_r1_iou0.5"] == 0.0
  assert out["tvr_svmr_r200_iou0.5"] == 0.0
  assert out["tvr_vcmr_r200_iou0.7"] == 0.0
  assert out["tvr_vr_r200"] == 0.0
  # With 99 other-video rows the GT row is at position 100 and is kept.
  out = M.tvr_metrics(vcmr=[rows[1:]], svmr=[rows[1:]], vr=[rows[1:]], ks=(1, 99, 100), **gt)
  assert out["tvr_svmr_r1_iou0.5"] == 1.0
  assert (out["tvr_vcmr_r99_iou0.5"], out["tvr_vcmr_r100_iou0.5"]) == (0.0, 1.0)
  assert (out["tvr_vr_r99"], out["tvr_vr_r100"]) == (0.0, 1.0)


def test_didemo_rule():
  # Four annotator windows. Pred [0,5]: IoU 1 with [0,5], 5/10 = 0.5 with [0,10], 0 with others.
  #   theta 0.5 -> 2 windows agree -> hit; theta 0.7 -> 1 window -> miss.
  # Pred [15,20]: IoU 1 with [15,20] only -> 1 window -> miss at both thresholds.
  w4 = np.array([[0, 5], [0, 10], [15, 20], [20, 25]], float)
  one = lambda s, e, v=0: [np.array([[v, s, e, 1.0]])]
  out = M.tvr_metrics(vcmr=one(0, 5), svmr=None, vr=None, gt_video=[0], gt_windows=[w4], ks=(1,))
  assert out == {"tvr_vcmr_r1_iou0.5": 1.0, "tvr_vcmr_r1_iou0.7": 0.0}
  out = M.tvr_metrics(vcmr=one(15, 20), svmr=None, vr=None, gt_video=[0], gt_windows=[w4], ks=(1,))
  assert out == {"tvr_vcmr_r1_iou0.5": 0.0, "tvr_vcmr_r1_iou0.7": 0.0}
  # Two agreeing windows but the wrong video -> miss.
  out = M.tvr_metrics(vcmr=one(0, 5, v=1), svmr=None, vr=None, gt_video=[0], gt_windows=[w4],
                      ks=(1,))
  assert out["tvr_vcmr_r1_iou0.5"] == 0.0
  # One window [15,20]: the usual rule -> IoU 1 -> hit.
  out = M.tvr_metrics(vcmr=one(15, 20), svmr=None, vr=None, gt_video=[0],
                      gt_windows=[np.array([[15.0, 20.0]])], ks=(1,))
  assert out == {"tvr_vcmr_r1_iou0.5": 1.0, "tvr_vcmr_r1_iou0.7": 1.0}
  # Three windows (< 4): any single window suffices -> hit.
  out = M.tvr_metrics(vcmr=one(15, 20), svmr=None, vr=None, gt_video=[0], gt_windows=[w4[:3]],
                      ks=(1,))
  assert out == {"tvr_vcmr_r1_iou0.5": 1.0, "tvr_vcmr_r1_iou0.7": 1.0}


def test_tvr_validation():
  case = _tvr_case()
  bad = dict(case, vcmr=[case["vcmr"][0], np.array([[2, 5, 1, 0.5]])])
  with pytest.raises(ValueError, match=r"query 1 VCMR.*reversed"):
    M.tvr_metrics(**bad)
  bad = dict(case, svmr=[case["svmr"][0], np.array([[2.5, 0, 1, 0.5]])])
  with pytest.raises(ValueError, match="video_idx"):
    M.tvr_metrics(**bad)
  bad = dict(case, vr=[case["vr"][0], np.array([[2, 0, 1]])])
  with pytest.raises(ValueError, match=r"\[n, 4\]"):
    M.tvr_metrics(**bad)
  bad = dict(case, vr=[case["vr"][0], np.array([[2, 0, 1, np.nan]])])
  with pytest.raises(ValueError, match="score"):
    M.tvr_metrics(**bad)
  with pytest.raises(ValueError, match="gt_windows"):
    M.tvr_metrics(**dict(case, gt_windows=[case["gt_windows"][0], np.array([[4.0, 0.0]])]))
  with pytest.raises(ValueError, match="entries"):
    M.tvr_metrics(**dict(case, vr=case["vr"][:1]))
  with pytest.raises(ValueError, match="thresholds"):
    M.tvr_metrics(**case, thresholds=(0.0, 0.5))
  with pytest.raises(ValueError, match="ks"):
    M.tvr_metrics(**case, ks=(0, 1))


def test_tvr_empty_prediction_list_is_a_miss():
  out = M.tvr_metrics(vcmr=[np.zeros((0, 4)), np.array([[1, 0, 4, 1.0]])], svmr=[[], []],
                      vr=[[], [[1, 0, 0, 1.0]]], gt_video=[0, 1],
                      gt_windows=[[0.0, 4.0], [0.0, 4.0]], ks=(1,))
  assert out == {"tvr_vcmr_r1_iou0.5": 0.5, "tvr_vcmr_r1_iou0.7": 0.5, "tvr_svmr_r1_iou0.5": 0.0,
                 "tvr_svmr_r1_iou0.7": 0.0, "tvr_vr_r1": 0.5}


# ----------------------------------------------------------------------------- submission


VIDEO_IDS = ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7"]
DESC_IDS = [90, 12]  # not sorted: evaluation must not depend on the order of queries


def _submission_from_case(case):
  return M.make_tvr_submission(desc_ids=DESC_IDS, descs=["a query", "another"],
                               video_ids=VIDEO_IDS, vcmr=case["vcmr"], svmr=case["svmr"],
                               vr=case["vr"])


def _gt_dicts(case):
  gt_video_ids = {d: VIDEO_IDS[v] for d, v in zip(DESC_IDS, case["gt_video"])}
  gt_windows = {d: w for d, w in zip(DESC_IDS, case["gt_windows"])}
  return gt_video_ids, gt_windows


def test_submission_format():
  sub = _submission_from_case(_tvr_case())
  assert sub["video2idx"] == {v: i for i, v in enumerate(VIDEO_IDS)}
  assert [e["desc_id"] for e in sub["VCMR"]] == DESC_IDS
  assert sub["VCMR"][0]["desc"] == "a query"
  # Sorted by score, ties in given order: 0.95, 0.9, 0.8 ([0,0,5]), 0.8 ([0,12,20]).
  assert sub["VCMR"][0]["predictions"] == [[0, 10.0, 16.0, 0.95], [1, 10.0, 20.0, 0.9],
                                           [0, 0.0, 5.0, 0.8], [0, 12.0, 20.0, 0.8]]
  assert type(sub["VR"][1]["predictions"][0][0]) is int
  assert type(sub["VR"][1]["predictions"][0][1]) is float
  json.dumps(sub)  # serialisable


def test_submission_round_trip():
  case = _tvr_case()
  sub = json.loads(json.dumps(_submission_from_case(case)))
  gv, gw = _gt_dicts(case)
  got = M.tvr_metrics_from_submission(sub, gt_video_ids=gv, gt_windows=gw)
  assert got == M.tvr_metrics(**case)
  assert got["tvr_vr_r5"] == 1.0 and got["tvr_vcmr_r1_iou0.5"] == 0.5  # not trivially equal


def test_submission_order_is_trusted():
  # The official scorer reads predictions in file order; re-ordering rows changes the result.
  case = _tvr_case()
  sub = json.loads(json.dumps(_submission_from_case(case)))
  gv, gw = _gt_dicts(case)
  sub["VR"][0]["predictions"].reverse()  # GT video 0 moves to position 1 for desc_id 90
  got = M.tvr_metrics_from_submission(sub, gt_video_ids=gv, gt_windows=gw)
  assert got["tvr_vr_r1"] == 0.5


def test_submission_subset_of_tasks():
  case = _tvr_case()
  sub = M.make_tvr_submission(desc_ids=DESC_IDS, descs=["a", "b"], video_ids=VIDEO_IDS,
                              vcmr=None, svmr=None, vr=case["vr"])
  assert "VCMR" not in sub and "SVMR" not in sub
  gv, gw = _gt_dicts(case)
  got = M.tvr_metrics_from_submission(sub, gt_video_ids=gv, gt_windows=gw)
  assert got == {"tvr_vr_r1": 0.0, "tvr_vr_r5": 1.0, "tvr_vr_r10": 1.0, "tvr_vr_r100": 1.0}


def test_submission_errors():
  case = _tvr_case()
  gv, gw = _gt_dicts(case)
  sub = json.loads(json.dumps(_submission_from_case(case)))
  missing = dict(sub, SVMR=sub["SVMR"][:1])  # drops desc_id 12
  with pytest.raises(ValueError, match="desc_id 12.*missing"):
    M.tvr_metrics_from_submission(missing, gt_video_ids=gv, gt_windows=gw)
  no_video = dict(sub, video2idx={k: v for k, v in sub["video2idx"].items() if k != "v2"})
  with pytest.raises(ValueError, match="desc_id 12.*'v2'"):
    M.tvr_metrics_from_submission(no_video, gt_video_ids=gv, gt_windows=gw)
  with pytest.raises(ValueError, match="desc_id 12.*not in the ground truth"):
    M.tvr_metrics_from_submission(sub, gt_video_ids={90: gv[90]}, gt_windows={90: gw[90]})
  dup = dict(sub, VR=sub["VR"] + sub["VR"][:1])
  with pytest.raises(ValueError, match="desc_id 90.*twice"):
    M.tvr_metrics_from_submission(dup, gt_video_ids=gv, gt_windows=gw)
  with pytest.raises(ValueError, match="out of range"):
    M.make_tvr_submission(desc_ids=DESC_IDS, descs=["a", "b"], video_ids=VIDEO_IDS[:3],
                          vcmr=case["vcmr"], svmr=None, vr=None)
  with pytest.raises(ValueError, match="duplicate desc_ids"):
    M.make_tvr_submission(desc_ids=[1, 1], descs=["a", "b"], video_ids=VIDEO_IDS,
                          vcmr=case["vcmr"], svmr=None, vr=None)


# ----------------------------------------------------------------------------- randomized


def _naive_iou(a, b):
  inter = min(a[1], b[1]) - max(a[0], b[0])
  if inter <= 0:
    return 0.0
  return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def _naive_tvr(vcmr, svmr, vr, gt_video, gt_windows, ks, thresholds):
  def ranked(rows):
    rows = [list(map(float, r)) for r in rows]
    return sorted(rows, key=lambda r: -r[3])[:100]  # Python's sort is stable

  def is_hit(row, gv, wins, th):
    if int(row[0]) != gv:
      return False
    n_ok = sum(_naive_iou(row[1:3], w) >= th - 1e-9 for w in wins)
    return n_ok >= 2 if len(wins) >= 4 else n_ok >= 1

  sums = {}
  q = len(gt_video)
  for i in range(q):
    gv, wins = gt_video[i], [list(w) for w in np.reshape(gt_windows[i], (-1, 2))]
    rv = ranked(vcmr[i])
    rs = [r for r in ranked(svmr[i]) if int(r[0]) == gv]
    rr = ranked(vr[i])
    for th in thresholds:
      for k in ks:
        sums.setdefault(f"tvr_vcmr_r{k}_iou{th}", 0)
        sums.setdefault(f"tvr_svmr_r{k}_iou{th}", 0)
        sums[f"tvr_vcmr_r{k}_iou{th}"] += any(is_hit(r, gv, wins, th) for r in rv[:k])
        sums[f"tvr_svmr_r{k}_iou{th}"] += any(is_hit(r, gv, wins, th) for r in rs[:k])
    for k in ks:
      sums.setdefault(f"tvr_vr_r{k}", 0)
      sums[f"tvr_vr_r{k}"] += any(int(r[0]) == gv for r in rr[:k])
  return {key: v / q for key, v in sums.items()}


def _naive_fig(final_rank, orig_rank, answer, pred, gt):
  q = len(final_rank)
  out = {}
  for th in (0.3, 0.5, 0.7):
    out[f"vcmr_r1_iou{th}"] = sum(
        final_rank[i] == 1 and answer[i] and _naive_iou(pred[i], gt[i]) >= th - 1e-9
        for i in range(q)) / q
  out["miou_r1"] = sum(_naive_iou(pred[i], gt[i]) for i in range(q)
                       if final_rank[i] == 1 and answer[i]) / q
  out["ver_acc"] = sum(bool(answer[i]) == (final_rank[i] == 1) for i in range(q)) / q
  for prefix, ranks in (("", final_rank), ("orig_", orig_rank)):
    for k in (1, 5, 10, 100):
      out[f"{prefix}vr_r{k}"] = sum(r <= k for r in ranks) / q
    out[f"{prefix}mrr"] = sum(1 / r for r in ranks) / q
    out[f"{prefix}mean_rank"] = sum(ranks) / q
  out["num_queries"] = float(q)
  return out


def _rand_spans(rng, n):
  # Times on a 0.5 s grid: exact binary fractions, so many IoUs land exactly on thresholds.
  s = rng.integers(0, 20, n) * 0.5
  return np.stack([s, s + rng.integers(0, 12, n) * 0.5], axis=1)


def test_randomized_against_naive():
  rng = np.random.default_rng(0)
  q, n_videos = 60, 6
  ks, ths = (1, 2, 5, 10, 100), (0.3, 0.5, 0.7)
  gt_video = rng.integers(0, n_videos, q).tolist()
  gt_windows = [_rand_spans(rng, int(rng.choice([1, 2, 4, 5]))) for _ in range(q)]

  def preds(narrow):
    out = []
    for i in range(q):
      n = int(rng.integers(0, 130))
      vid = rng.integers(0, 2 if narrow else n_videos, n)
      vid = np.where(vid == 0, gt_video[i], vid)  # make GT-video rows common
      score = rng.integers(0, 5, n) / 4.0           # few distinct scores -> many ties
      out.append(np.column_stack([vid, _rand_spans(rng, n), score]))
    return out

  vcmr, svmr, vr = preds(False), preds(True), preds(False)
  got = M.tvr_metrics(vcmr=vcmr, svmr=svmr, vr=vr, gt_video=gt_video, gt_windows=gt_windows,
                      ks=ks, thresholds=ths)
  want = _naive_tvr(vcmr, svmr, vr, gt_video, gt_windows, ks, ths)
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  assert 0 < got["tvr_vcmr_r10_iou0.5"] < 1  # the sample is not degenerate

  final_rank = rng.integers(1, 4, q) ** rng.integers(1, 6, q)  # ranks from 1 to 243
  orig_rank = rng.integers(1, 300, q)
  answer = rng.random(q) < 0.5
  pred, gt = _rand_spans(rng, q), _rand_spans(rng, q)
  got = M.fig_metrics(final_rank=final_rank, orig_rank=orig_rank, answer=answer,
                      pred_time=pred, gt_time=gt)
  want = _naive_fig(final_rank.tolist(), orig_rank.tolist(), answer.tolist(), pred.tolist(),
                    gt.tolist())
  assert got.keys() == want.keys()
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
  assert got["vcmr_r1_iou0.3"] > 0


# ------------------------------------------------------------------ verify_auc


def test_verify_auc_counts_ordered_pairs_and_ties_half():
  # right: margins 3, 1; wrong: 2, 1, 0 -> pairs (3>2, 3>1, 3>0, 1<2, 1=1, 1>0) = 4.5 / 6.
  assert M.verify_auc([3, 2, 1, 1, 0], [1, 0, 1, 0, 0]) == pytest.approx(4.5 / 6)
  assert M.verify_auc([5, 4, 1, 0], [1, 1, 0, 0]) == 1.0
  assert M.verify_auc([0, 1], [1, 0]) == 0.0
  assert M.verify_auc([2.0, 2.0, 2.0], [True, False, False]) == 0.5
  # Monotone in the margins: a threshold-free measure.
  m, r = np.array([0.3, -1.0, 2.0, 0.1, 0.7]), np.array([1, 0, 1, 0, 0], bool)
  assert M.verify_auc(m, r) == M.verify_auc(np.exp(3 * m), r)
  assert M.verify_auc([1.0, 2.0], [1, 1]) is None and M.verify_auc([1.0], [0]) is None


def test_verify_auc_bad_input():
  with pytest.raises(ValueError, match="shape"):
    M.verify_auc([1.0, 2.0], [1, 0, 1])
  with pytest.raises(ValueError, match="non-finite"):
    M.verify_auc([1.0, np.nan], [1, 0])
  with pytest.raises(ValueError, match="booleans"):
    M.verify_auc([1.0, 2.0], ["matched", "no"])


# ------------------------------------------------------------------ properties (hypothesis)

from hypothesis import given, strategies as st   # noqa: E402  pylint: disable=g-import-not-at-top


def _span(draw, lo=0.0, hi=50.0):
  a = draw(st.floats(lo, hi, allow_nan=False))
  b = draw(st.floats(lo, hi, allow_nan=False))
  return (min(a, b), max(a, b))


@st.composite
def spans(draw):
  return _span(draw)


@given(spans(), spans())
def test_iou_is_a_symmetric_ratio_of_measures(p, g):
  iou = float(M.temporal_iou(np.array(p), np.array(g)))
  assert 0.0 <= iou <= 1.0
  assert iou == float(M.temporal_iou(np.array(g), np.array(p)))
  inter = max(0.0, min(p[1], g[1]) - max(p[0], g[0]))
  union = (p[1] - p[0]) + (g[1] - g[0]) - inter
  expect = inter / union if inter > 0 else 0.0
  assert iou == pytest.approx(expect, rel=1e-9, abs=1e-12)
  if p[1] > p[0]:
    assert float(M.temporal_iou(np.array(p), np.array(p))) == 1.0


@st.composite
def fig_rows(draw):
  q = draw(st.integers(1, 12))
  final = draw(st.lists(st.integers(1, 150), min_size=q, max_size=q))
  orig = draw(st.lists(st.integers(1, 150), min_size=q, max_size=q))
  answer = draw(st.lists(st.booleans(), min_size=q, max_size=q))
  pred = [_span(draw) for _ in range(q)]
  gt = [_span(draw) for _ in range(q)]
  return np.array(final), np.array(orig), np.array(answer), np.array(pred), np.array(gt)


@given(fig_rows())
def test_fig_metrics_against_a_brute_force_reference(rows):
  """The gating (a grounding counts only when the top-1 is the ground truth AND the verdict
  is 'matched'), R@k, MRR and mean rank, query by query in plain Python."""
  final, orig, answer, pred, gt = rows
  m = M.fig_metrics(final_rank=final, orig_rank=orig, answer=answer, pred_time=pred,
                    gt_time=gt)
  q = len(final)
  ious = []
  for (ps, pe), (gs, ge) in zip(pred, gt):
    inter = max(0.0, min(pe, ge) - max(ps, gs))
    union = (pe - ps) + (ge - gs) - inter
    ious.append(inter / union if inter > 0 else 0.0)
  gate = [f == 1 and a for f, a in zip(final, answer)]
  for theta in M.IOU_THRESHOLDS:
    want = sum(g and i >= theta - 1e-9 for g, i in zip(gate, ious)) / q
    assert m[f"vcmr_r1_iou{theta}"] == pytest.approx(want)
  assert m["miou_r1"] == pytest.approx(sum(i for g, i in zip(gate, ious) if g) / q)
  assert m["ver_acc"] == pytest.approx(sum(a == (f == 1) for f, a in zip(final, answer)) / q)
  for prefix, ranks in (("", final), ("orig_", orig)):
    for k in M.RECALL_KS:
      assert m[f"{prefix}vr_r{k}"] == pytest.approx(sum(r <= k for r in ranks) / q)
    assert m[f"{prefix}mrr"] == pytest.approx(sum(1 / r for r in ranks) / q)
    assert m[f"{prefix}mean_rank"] == pytest.approx(sum(ranks) / q)


@st.composite
def didemo_query(draw):
  m = draw(st.integers(1, 6))                       # annotated windows
  windows = np.array([_span(draw, 0, 30) for _ in range(m)])
  windows[:, 1] = np.maximum(windows[:, 1], windows[:, 0] + 0.5)   # each has a length
  n = draw(st.integers(1, 5))
  rows = np.array([[draw(st.integers(0, 2)), *_span(draw, 0, 30), 1.0 / (i + 1)]
                   for i in range(n)])
  return rows, windows


@given(didemo_query())
def test_tvr_moment_recall_follows_the_two_of_four_rule(query):
  """With >= 4 annotated windows a prediction must agree (IoU >= theta) with at least 2 of
  them; with fewer, with any one; and be in the ground-truth video (0)."""
  rows, windows = query
  got = M.tvr_metrics(vcmr=[rows], svmr=None, vr=None, gt_video=[0], gt_windows=[windows],
                      ks=(1, 5), thresholds=(0.5,))
  hits = []
  for video, s, e, _ in rows[:100]:
    agree = sum(float(M.temporal_iou(np.array([s, e]), w)) >= 0.5 - 1e-9 for w in windows)
    need = 2 if len(windows) >= 4 else 1
    hits.append(video == 0 and agree >= need)
  for k in (1, 5):
    assert got[f"tvr_vcmr_r{k}_iou0.5"] == float(any(hits[:k]))


@given(st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=30))
def test_verify_auc_equals_the_pair_count(pairs):
  m = np.array([p[0] for p in pairs], float)
  r = np.array([p[1] for p in pairs], bool)
  got = M.verify_auc(m, r)
  if r.all() or not r.any():
    assert got is None
    return
  diff = m[r][:, None] - m[~r][None, :]
  assert got == pytest.approx(((diff > 0) + 0.5 * (diff == 0)).mean())
