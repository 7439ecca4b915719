"""Evaluation metrics for Video Corpus Moment Retrieval (pure NumPy, host side).

Two protocols (METHOD.md section 4):

* FIG (VERIFIED benchmarks): one final answer per query. A VCMR hit needs the final top-1
  video to be the ground truth AND the agent's verdict `matched` AND IoU >= theta.
* TVR (TVRetrieval, ECCV 2020; official scorer `standalone_eval/eval.py` of
  jayleicn/TVRetrieval): ranked lists of (video_idx, start, end, score), R@k at IoU theta for
  VCMR / SVMR and R@k for VR. Where this module follows that scorer rather than a
  natural reading of the task, the comment says so:
    - only the first 100 predictions of a query are ever looked at (`max_pred_per_query`);
    - SVMR keeps the rows of the GT video *after* that top-100 cut, then takes the first k;
    - VR does NOT deduplicate videos: R@k looks at the first k rows as given;
    - a submission file's prediction order is trusted (its scores are not re-sorted);
    - DiDeMo-style GT (>= 4 windows) counts a hit when >= 2 windows reach the threshold.
  Differences kept on purpose: fractions in [0, 1] (official: percent rounded to 2 decimals),
  our key names (official: "0.5-r1" under "VCMR"/"SVMR", "r1" under "VR"), IoU in float64
  with a 1e-9 tolerance (official: float32), no per-description-type breakdown, 2-3 GT
  windows use the any-window rule (official code only handles 1 or >= 4 windows), and
  malformed input raises instead of being evaluated.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

IOU_THRESHOLDS = (0.3, 0.5, 0.7)  # FIG protocol
TVR_IOU_THRESHOLDS = (0.5, 0.7)
RECALL_KS = (1, 5, 10, 100)

# IoU values are ratios of float differences, so an IoU that is exactly theta on paper can come
# out a few ulp below it; compare with this slack so exact-threshold cases count as hits.
_IOU_TOL = 1e-9
# The official TVR scorer only reads the first 100 predictions per query.
_MAX_PRED_PER_QUERY = 100
# TVR/DiDeMo rule: with >= 4 annotated windows a prediction must agree with at least 2 of them.
_DIDEMO_MIN_WINDOWS = 4
_DIDEMO_MIN_AGREE = 2
_TVR_TASKS = ("VCMR", "SVMR", "VR")


# ----------------------------------------------------------------------------- IoU


def _check_spans(x: np.ndarray, name: str) -> None:
  """Raise on non-finite or reversed (start > end) spans, naming the first bad index."""
  if x.ndim == 0 or x.shape[-1] != 2:
    raise ValueError(f"{name}: expected shape [..., 2] (start, end), got {x.shape}")
  finite = np.isfinite(x).all(axis=-1)
  if not finite.all():
    idx = tuple(int(i) for i in np.argwhere(~finite)[0])
    raise ValueError(f"{name}{list(idx)}: non-finite span {x[idx].tolist()}")
  reversed_ = x[..., 0] > x[..., 1]
  if reversed_.any():
    idx = tuple(int(i) for i in np.argwhere(reversed_)[0])
    raise ValueError(
        f"{name}{list(idx)}: reversed span, start {x[idx][0]!r} > end {x[idx][1]!r}")


def temporal_iou(pred, gt) -> np.ndarray:
  """Temporal IoU of (start, end) spans [..., 2], broadcast; float64 in [0, 1].

  Touching, disjoint and zero-length spans give 0 (a zero-length span has no measure, so
  it cannot overlap anything). Reversed or non-finite spans raise ValueError.
  """
  p = np.asarray(pred, dtype=np.float64)
  g = np.asarray(gt, dtype=np.float64)
  _check_spans(p, "pred")
  _check_spans(g, "gt")
  inter = np.minimum(p[..., 1], g[..., 1]) - np.maximum(p[..., 0], g[..., 0])
  # When the spans overlap (inter > 0) the union equals the hull; one subtraction is also
  # more exact than len_p + len_g - inter. When they do not, IoU is 0 whatever the union.
  hull = np.maximum(p[..., 1], g[..., 1]) - np.minimum(p[..., 0], g[..., 0])
  overlap = inter > 0
  iou = np.divide(inter, hull, out=np.zeros(np.broadcast(inter, hull).shape), where=overlap)
  return np.clip(iou, 0.0, 1.0)


def _iou_at_least(iou: np.ndarray, theta: float) -> np.ndarray:
  return iou >= theta - _IOU_TOL


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
  out = tuple(float(t) for t in thresholds)
  # theta <= 0 would count non-overlapping (even wrong-video) predictions as hits.
  if not out or not all(0.0 < t <= 1.0 for t in out):
    raise ValueError(f"IoU thresholds must be in (0, 1], got {thresholds!r}")
  return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  out = []
  for k in ks:
    if isinstance(k, bool) or int(k) != k or k < 1:
      raise ValueError(f"recall ks must be positive integers, got {ks!r}")
    out.append(int(k))
  if not out:
    raise ValueError("recall ks must not be empty")
  return tuple(out)


# ----------------------------------------------------------------------------- FIG


def _as_ranks(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected shape [Q], got {a.shape}")
  if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
    raise ValueError(f"{name}: ranks must be integers, got dtype {a.dtype}")
  af = a.astype(np.float64)
  bad = ~np.isfinite(af) | (af != np.round(af)) | (af < 1)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name}[{i}] = {a[i]!r}: ranks must be integers >= 1 (1-based)")
  return af


def _as_bool(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name}: expected shape [Q], got {a.shape}")
  if a.dtype == bool:
    return a
  # Accept 0/1 integers, nothing else (e.g. the strings 'matched'/'not_matched' would be
  # truthy and silently count as True).
  if np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all():
    return a.astype(bool)
  raise ValueError(f"{name}: expected booleans (or 0/1), got dtype {a.dtype}")


def _rank_metrics(rank: np.ndarray, prefix: str) -> dict[str, float]:
  out = {f"{prefix}vr_r{k}": float(np.mean(rank <= k)) for k in RECALL_KS}
  out[f"{prefix}mrr"] = float(np.mean(1.0 / rank))
  out[f"{prefix}mean_rank"] = float(np.mean(rank))
  return out


def fig_metrics(*, final_rank, orig_rank, answer, pred_time, gt_time) -> dict[str, float]:
  """One row of the FIG protocol over Q queries (see METHOD.md section 4)."""
  final_r = _as_ranks(final_rank, "final_rank")
  q = final_r.shape[0]
  if q == 0:
    raise ValueError("fig_metrics: no queries (Q == 0)")
  orig_r = _as_ranks(orig_rank, "orig_rank")
  ans = _as_bool(answer, "answer")
  pred = np.asarray(pred_time, dtype=np.float64)
  gt = np.asarray(gt_time, dtype=np.float64)
  for name, arr, shape in (("orig_rank", orig_r, (q,)), ("answer", ans, (q,)),
                           ("pred_time", pred, (q, 2)), ("gt_time", gt, (q, 2))):
    if arr.shape != shape:
      raise ValueError(f"fig_metrics: {name} has shape {arr.shape}, expected {shape} "
                       f"(Q = {q} from final_rank)")

  iou = temporal_iou(pred, gt)
  # A grounding only counts if the agent both retrieved the GT video and accepted it.
  gate = (final_r == 1) & ans
  out: dict[str, float] = {}
  for theta in IOU_THRESHOLDS:
    out[f"vcmr_r1_iou{theta}"] = float(np.mean(gate & _iou_at_least(iou, theta)))
  out["miou_r1"] = float(np.mean(np.where(gate, iou, 0.0)))
  # The verdict is right when it says 'matched' exactly when the top-1 video is the GT.
  out["ver_acc"] = float(np.mean(ans == (final_r == 1)))
  out.update(_rank_metrics(final_r, ""))
  out.update(_rank_metrics(orig_r, "orig_"))
  out["num_queries"] = float(q)
  return out


def verify_auc(margin, right) -> float | None:
  """The verifier's ROC AUC: the probability that a right top-1 gets a higher p(matched)
  margin than a wrong one (ties count half), over the given queries. It does not depend on
  the threshold the verdicts use. None when one class is absent."""
  m = np.asarray(margin, dtype=np.float64)
  r = _as_bool(right, "right")
  if m.shape != r.shape:
    raise ValueError(f"verify_auc: margin has shape {m.shape}, right {r.shape}")
  if not np.isfinite(m).all():
    raise ValueError("verify_auc: margin has non-finite values")
  pos, neg = int(r.sum()), int((~r).sum())
  if not pos or not neg:
    return None
  # Mann-Whitney U from mid-ranks (ties share their average rank).
  order = np.argsort(m, kind="stable")
  ranks = np.empty(len(m))
  sorted_m = m[order]
  first = np.r_[True, sorted_m[1:] != sorted_m[:-1]]
  group = np.cumsum(first) - 1
  starts = np.flatnonzero(first)
  ends = np.r_[starts[1:], len(m)]
  ranks[order] = ((starts + ends + 1) / 2.0)[group]
  return float((ranks[r].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


# ----------------------------------------------------------------------------- TVR


def _as_pred_rows(x, name: str, *, min_cols: int, check_spans: bool) -> np.ndarray:
  """Predictions of one query as float64 [n, >= min_cols]; empty lists become [0, min_cols]."""
  a = np.asarray(x, dtype=np.float64)
  if a.size == 0:
    return np.zeros((0, max(min_cols, a.shape[-1] if a.ndim == 2 else 0)))
  if a.ndim != 2 or a.shape[1] < min_cols:
    raise ValueError(f"{name}: expected shape [n, {min_cols}], got {a.shape}")
  vid = a[:, 0]
  bad = ~np.isfinite(vid) | (vid != np.round(vid)) | (vid < 0)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"{name}[{i}]: video_idx {a[i, 0]!r} is not a non-negative integer")
  if check_spans:
    _check_spans(a[:, 1:3], name)
  return a


def _as_gt_windows(x, name: str) -> np.ndarray:
  w = np.asarray(x, dtype=np.float64)
  if w.shape == (2,):  # a single flat (start, end), as in the TVR annotation files
    w = w[None]
  if w.ndim != 2 or w.shape[1] != 2 or w.shape[0] < 1:
    raise ValueError(f"{name}: expected shape [m >= 1, 2] or [2], got {w.shape}")
  _check_spans(w, name)
  return w


def _moment_hits(rows: np.ndarray, gt_video: int, windows: np.ndarray,
                 thresholds: tuple[float, ...]) -> np.ndarray:
  """[n, len(thresholds)] bool: row is in the GT video and matches the GT moment."""
  same_video = rows[:, 0] == gt_video
  iou = temporal_iou(rows[:, None, 1:3], windows[None, :, :])  # [n, m]
  hits = []
  for theta in thresholds:
    agree = _iou_at_least(iou, theta)
    if windows.shape[0] >= _DIDEMO_MIN_WINDOWS:
      ok = agree.sum(axis=1) >= _DIDEMO_MIN_AGREE
    else:
      ok = agree.any(axis=1)
    hits.append(ok & same_video)
  return np.stack(hits, axis=1) if hits else np.zeros((rows.shape[0], 0), bool)


def _recall_at(first_hit: np.ndarray, k: int) -> float:
  """first_hit: 0-based position of the first hit per query, or inf for none."""
  return float(np.mean(first_hit < k))


def _first_true(mask: np.ndarray) -> float:
  return float(np.argmax(mask)) if mask.any() else math.inf


def _tvr_core(*, vcmr, svmr, vr, gt_video, gt_windows, ks, thresholds,
              query_names: Sequence[str]) -> dict[str, float]:
  """TVR metrics on predictions already in ranked order (rows [n, >= 3])."""
  ks = _check_ks(ks)
  thresholds = _check_thresholds(thresholds)
  q = len(gt_video)
  if q == 0:
    raise ValueError("tvr_metrics: no queries (Q == 0)")
  if len(gt_windows) != q:
    raise ValueError(f"tvr_metrics: gt_windows has {len(gt_windows)} entries, gt_video {q}")
  for task, preds in (("vcmr", vcmr), ("svmr", svmr), ("vr", vr)):
    if preds is not None and len(preds) != q:
      raise ValueError(f"tvr_metrics: {task} has {len(preds)} entries, gt_video {q}")
  if vcmr is None and svmr is None and vr is None:
    raise ValueError("tvr_metrics: no predictions (vcmr, svmr and vr are all None)")

  # Position of the first hit per (query, threshold); recall at k is then position < k.
  vcmr_first = np.full((q, len(thresholds)), math.inf)
  svmr_first = np.full((q, len(thresholds)), math.inf)
  vr_first = np.full(q, math.inf)
  for i in range(q):
    label = query_names[i]
    gv = gt_video[i]
    if isinstance(gv, (bool, np.bool_)) or int(gv) != gv or gv < 0:
      raise ValueError(f"{label}: gt_video {gv!r} is not a non-negative integer")
    gv = int(gv)
    windows = _as_gt_windows(gt_windows[i], f"{label} gt_windows")
    if vcmr is not None:
      rows = _as_pred_rows(vcmr[i], f"{label} VCMR", min_cols=3, check_spans=True)
      hits = _moment_hits(rows[:_MAX_PRED_PER_QUERY], gv, windows, thresholds)
      for j in range(len(thresholds)):
        vcmr_first[i, j] = _first_true(hits[:, j])
    if svmr is not None:
      rows = _as_pred_rows(svmr[i], f"{label} SVMR", min_cols=3, check_spans=True)
      # Official order of operations: cut to the top 100 rows first, then keep the GT
      # video's rows; k counts positions among those kept rows.
      rows = rows[:_MAX_PRED_PER_QUERY]
      rows = rows[rows[:, 0] == gv]
      hits = _moment_hits(rows, gv, windows, thresholds)
      for j in range(len(thresholds)):
        svmr_first[i, j] = _first_true(hits[:, j])
    if vr is not None:
      # Start/end are meaningless for VR, so they are not validated.
      rows = _as_pred_rows(vr[i], f"{label} VR", min_cols=1, check_spans=False)
      # Official: no deduplication of videos; R@k looks at the first k rows as given.
      vr_first[i] = _first_true(rows[:_MAX_PRED_PER_QUERY, 0] == gv)

  out: dict[str, float] = {}
  for task, first in (("vcmr", vcmr_first if vcmr is not None else None),
                      ("svmr", svmr_first if svmr is not None else None)):
    if first is None:
      continue
    for j, theta in enumerate(thresholds):
      for k in ks:
        out[f"tvr_{task}_r{k}_iou{theta}"] = _recall_at(first[:, j], k)
  if vr is not None:
    for k in ks:
      out[f"tvr_vr_r{k}"] = _recall_at(vr_first, k)
  return out


def _rank_by_score(rows, name: str) -> np.ndarray:
  """Rows [n, 4] sorted by score (column 3) descending; ties keep the given order."""
  a = np.asarray(rows, dtype=np.float64)
  if a.size == 0:
    return np.zeros((0, 4))
  if a.ndim != 2 or a.shape[1] != 4:
    raise ValueError(f"{name}: expected shape [n, 4] (video_idx, start, end, score), "
                     f"got {a.shape}")
  score = a[:, 3]
  if not np.isfinite(score).all():
    i = int(np.argmax(~np.isfinite(score)))
    raise ValueError(f"{name}[{i}]: non-finite score {score[i]!r}")
  # Negating keeps ties equal, so a stable sort keeps their given order.
  return a[np.argsort(-score, kind="stable")]


def tvr_metrics(*, vcmr, svmr, vr, gt_video, gt_windows, ks=RECALL_KS,
                thresholds=TVR_IOU_THRESHOLDS) -> dict[str, float]:
  """TVR-protocol recalls. Each of vcmr/svmr/vr: Q arrays [n, 4] (video_idx, start, end,
  score), ranked here by score (stable); pass None to skip a task. Keys
  'tvr_vcmr_r{k}_iou{theta}', 'tvr_svmr_r{k}_iou{theta}', 'tvr_vr_r{k}', fractions in [0, 1].
  As in the official scorer, only the top 100 predictions per query are read."""
  q = len(gt_video)
  names = [f"query {i}" for i in range(q)]

  def ranked(preds, task):
    if preds is None:
      return None
    if len(preds) != q:
      raise ValueError(f"tvr_metrics: {task} has {len(preds)} entries, gt_video {q}")
    return [_rank_by_score(p, f"query {i} {task}") for i, p in enumerate(preds)]

  return _tvr_core(vcmr=ranked(vcmr, "VCMR"), svmr=ranked(svmr, "SVMR"), vr=ranked(vr, "VR"),
                   gt_video=list(gt_video), gt_windows=list(gt_windows), ks=ks,
                   thresholds=thresholds, query_names=names)


def make_tvr_submission(*, desc_ids, descs, video_ids, vcmr, svmr, vr) -> dict:
  """Official TVR submission dict (JSON-serialisable). Predictions are written sorted by
  score (stable) and cut to the top 100, since the official scorer trusts the file order
  and reads no further; a task given as None is left out, as the scorer allows."""
  desc_ids = list(desc_ids)
  descs = list(descs)
  video_ids = list(video_ids)
  q = len(desc_ids)
  if q == 0:
    raise ValueError("make_tvr_submission: no queries")
  if len(descs) != q:
    raise ValueError(f"make_tvr_submission: {len(descs)} descs for {q} desc_ids")
  for d in desc_ids:
    if isinstance(d, (bool, np.bool_)) or int(d) != d:
      raise ValueError(f"make_tvr_submission: desc_id {d!r} is not an integer")
  if len(set(int(d) for d in desc_ids)) != q:
    raise ValueError("make_tvr_submission: duplicate desc_ids")
  if len(set(video_ids)) != len(video_ids):
    raise ValueError("make_tvr_submission: duplicate video_ids")
  n_videos = len(video_ids)

  sub: dict[str, Any] = {"video2idx": {str(v): i for i, v in enumerate(video_ids)}}
  for task, preds in (("VCMR", vcmr), ("SVMR", svmr), ("VR", vr)):
    if preds is None:
      continue
    if len(preds) != q:
      raise ValueError(f"make_tvr_submission: {task} has {len(preds)} entries, "
                       f"{q} desc_ids")
    entries = []
    for d, text, p in zip(desc_ids, descs, preds):
      label = f"desc_id {int(d)} {task}"
      rows = _rank_by_score(p, label)
      _as_pred_rows(rows, label, min_cols=4, check_spans=task != "VR")
      rows = rows[:_MAX_PRED_PER_QUERY]
      if rows.size and rows[:, 0].max() >= n_videos:
        raise ValueError(f"{label}: video_idx {int(rows[:, 0].max())} out of range "
                         f"for {n_videos} video_ids")
      entries.append({
          "desc_id": int(d),
          "desc": str(text),
          "predictions": [[int(r[0]), float(r[1]), float(r[2]), float(r[3])] for r in rows],
      })
    sub[task] = entries
  return sub


def tvr_metrics_from_submission(submission: Mapping, *, gt_video_ids: Mapping[int, str],
                                gt_windows: Mapping[int, np.ndarray], ks=RECALL_KS,
                                thresholds=TVR_IOU_THRESHOLDS) -> dict[str, float]:
  """Evaluate a submission dict (see make_tvr_submission) against GT keyed by desc_id.

  Follows the official scorer: each query's predictions are used in the order written
  (scores are not re-sorted), every GT desc_id must be present in each submitted task and
  the submission may not hold desc_ids absent from the GT; tasks missing from the
  submission are skipped.
  """
  if set(gt_video_ids) != set(gt_windows):
    raise ValueError("tvr_metrics_from_submission: gt_video_ids and gt_windows have "
                     "different desc_ids")
  if "video2idx" not in submission:
    raise ValueError("tvr_metrics_from_submission: submission has no 'video2idx'")
  video2idx = submission["video2idx"]
  tasks = [t for t in _TVR_TASKS if t in submission]
  if not tasks:
    raise ValueError("tvr_metrics_from_submission: submission has none of "
                     f"{list(_TVR_TASKS)}")
  order = sorted(gt_video_ids)
  if not order:
    raise ValueError("tvr_metrics_from_submission: empty ground truth")
  gt_video = []
  for d in order:
    vid = gt_video_ids[d]
    if vid not in video2idx:
      raise ValueError(f"desc_id {d}: GT video {vid!r} is not in the submission's "
                       "video2idx")
    gt_video.append(video2idx[vid])

  per_task: dict[str, list | None] = {"VCMR": None, "SVMR": None, "VR": None}
  for task in tasks:
    by_id: dict[int, Any] = {}
    for e in submission[task]:
      d = int(e["desc_id"])
      if d in by_id:  # the official scorer would silently keep the last one
        raise ValueError(f"desc_id {d}: appears twice in submission[{task!r}]")
      # Official: only the first 3 fields of a row are read (the score is for record).
      by_id[d] = [list(r)[:3] for r in e["predictions"]]
    for d in order:
      if d not in by_id:
        raise ValueError(f"desc_id {d}: missing from submission[{task!r}]")
    extra = sorted(set(by_id) - set(order))
    if extra:
      raise ValueError(f"desc_id {extra[0]}: in submission[{task!r}] but not in the "
                       f"ground truth ({len(extra)} such desc_ids)")
    per_task[task] = [by_id[d] for d in order]

  return _tvr_core(vcmr=per_task["VCMR"], svmr=per_task["SVMR"], vr=per_task["VR"],
                   gt_video=gt_video, gt_windows=[gt_windows[d] for d in order], ks=ks,
                   thresholds=thresholds, query_names=[f"desc_id {d}" for d in order])
