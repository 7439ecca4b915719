"""Evaluation: method rows under the FIG and TVR protocols, prediction export, the table.

A method row is evaluated into a `RowResult`; `write_outputs` stages every row's files and
metrics.json, then publishes them into the workdir (metrics.json last).
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax import metrics as metrics_lib
from vsr_jax import workdir as workdir_lib
from vsr_jax.engine import encode
from vsr_jax.engine.index import check_top_k
from vsr_jax.progress import Progress

TABLE_COLUMNS = ("vcmr_r1_iou0.3", "vcmr_r1_iou0.5", "vcmr_r1_iou0.7", "miou_r1", "ver_acc",
                 "vr_r1", "vr_r5", "vr_r10", "vr_r100", "mrr", "mean_rank", "orig_vr_r1")


@dataclasses.dataclass
class Turn:
  """Per-query arrays of one turn (after the turn; finished episodes carry their state)."""
  rank: np.ndarray            # [Q] GT rank under the query searched with at this turn
  policy_rank: np.ndarray     # [Q] GT rank under the query the policy produced at this turn
  retrieved: np.ndarray       # [Q] top-1 video index
  answer: np.ndarray          # [Q] bool verdict 'matched'
  pred_time: np.ndarray       # [Q, 2] seconds, grounded in the retrieved video


@dataclasses.dataclass
class RowResult:
  name: str
  orig_rank: np.ndarray       # [Q]
  turns: list                 # [Turn], the last one is final
  vcmr: list                  # [Q] arrays [n, 4] (video_idx, start, end, score)
  svmr: list
  vr: list


def row_metrics(row: RowResult, split) -> dict:
  def fig(turn: Turn):
    return metrics_lib.fig_metrics(final_rank=turn.rank, orig_rank=row.orig_rank,
                                   answer=turn.answer, pred_time=turn.pred_time,
                                   gt_time=split.times)
  out = fig(row.turns[-1])
  out["per_turn"] = [fig(t) for t in row.turns]
  out.update(metrics_lib.tvr_metrics(vcmr=row.vcmr, svmr=row.svmr, vr=row.vr,
                                     gt_video=split.video_index, gt_windows=split.times))
  return out


def prediction_rows(row: RowResult, split):
  final = row.turns[-1]
  for i in range(split.num_queries):
    gt = int(split.video_index[i])
    turns = []
    for t in row.turns:
      hit = int(t.retrieved[i]) == gt
      turns.append({
          "rank": int(t.rank[i]), "policy_rank": int(t.policy_rank[i]),
          "iou_r1": float(metrics_lib.temporal_iou(t.pred_time[i], split.times[i])) if hit else 0.0,
          "retrieved_video": split.video_ids[int(t.retrieved[i])],
          "answer": "matched" if t.answer[i] else "not_matched",
          "pred_time": [round(float(x), 3) for x in t.pred_time[i]],
      })
    yield {
        "desc_id": int(split.desc_ids[i]), "query": split.queries[i],
        "gt_video": split.video_ids[gt], "gt_time": [float(x) for x in split.times[i]],
        "orig_rank": int(row.orig_rank[i]), "final_rank": int(final.rank[i]),
        "final_iou_r1": turns[-1]["iou_r1"], "answer": turns[-1]["answer"],
        "pred_time": turns[-1]["pred_time"], "retrieved_video": turns[-1]["retrieved_video"],
        "turns": turns,
    }


def write_outputs(workdir: str, rows: list, split, *, main_row: str | None = None) -> dict:
  """Writes predictions, submissions and metrics.json for all rows; returns the metrics."""
  staging = workdir_lib.staging_dir(workdir)
  os.makedirs(os.path.join(staging, "predictions"))
  os.makedirs(os.path.join(staging, "submissions"))
  all_metrics = {}
  for row in rows:
    all_metrics[row.name] = row_metrics(row, split)
    with open(os.path.join(staging, "predictions", f"{row.name}.jsonl"), "w") as f:
      for record in prediction_rows(row, split):
        f.write(json.dumps(record) + "\n")
    submission = metrics_lib.make_tvr_submission(
        desc_ids=split.desc_ids, descs=split.queries, video_ids=split.video_ids,
        vcmr=row.vcmr, svmr=row.svmr, vr=row.vr)
    with open(os.path.join(staging, "submissions", f"{row.name}.tvr.json"), "w") as f:
      json.dump(submission, f)
  main_row = main_row or rows[-1].name
  os.link(os.path.join(staging, "submissions", f"{main_row}.tvr.json"),
          os.path.join(staging, "tvr_submission.json"))
  workdir_lib.write_json(os.path.join(staging, "metrics.json"), all_metrics)
  workdir_lib.publish(workdir, staging)
  return all_metrics


def format_table(all_metrics: dict) -> str:
  """Method rows x FIG columns (percent, mean rank as is), plus per-turn VR R@1."""
  cols = list(TABLE_COLUMNS)
  max_turns = max(len(m["per_turn"]) for m in all_metrics.values())
  head = ["method"] + [c.replace("vcmr_r1_iou", "vcmr@") for c in cols] + [
      f"t{t + 1}_vr_r1" for t in range(max_turns)]
  lines = []
  for name, m in all_metrics.items():
    cells = [name]
    for c in cols:
      cells.append(f"{m[c]:.1f}" if c == "mean_rank" else f"{100 * m[c]:.1f}")
    per_turn = [f"{100 * t['vr_r1']:.1f}" for t in m["per_turn"]]
    cells += per_turn + [""] * (max_turns - len(per_turn))
    lines.append(cells)
  widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                            enumerate(zip(r, widths)))
  n = int(next(iter(all_metrics.values()))["num_queries"])
  return "\n".join([f"FIG protocol, {n} queries (R@1 and VR in %):", fmt(head)] +
                   [fmt(r) for r in lines])


# ---------------------------------------------------------------------------- baseline

def _all_windows(scores: np.ndarray, n: int, top: int):
  """Every window [a, b] of the first n frames, ranked by its summed centred score."""
  s = scores[:n] - scores[:n].mean()
  prefix = np.concatenate([[0.0], np.cumsum(s)])
  a, b = np.triu_indices(n)
  gain = prefix[b + 1] - prefix[a]
  order = np.argsort(-gain, kind="stable")[:top]
  return a[order], b[order], gain[order]


def engine_single_shot(config, engine, params, split, index, *,
                       name="engine_single_shot") -> RowResult:
  """The engine alone: top-k retrieval with the original query, grounding by frame scores."""
  k = min(config.eval.tvr_top_k, split.num_videos)
  check_top_k(k, split.num_videos, "eval.tvr_top_k")
  batch = config.eval.batch_size
  q = encode.encode_queries(engine, params, split.tokens, batch)
  frame_fn = jax.jit(lambda p, f: engine.apply({"params": p}, f,
                                               method=type(engine).frame_vectors))

  @jax.jit
  def search(index, q, gt):
    return index.search_and_rank(q, k, gt)

  @jax.jit
  def ground(q, fv, nf):
    s = jnp.einsum("be,bkfe->bkf", q, fv)
    return encode.best_window(s, nf)

  Q = split.num_queries
  top_scores = np.zeros((Q, k), np.float32)
  top_ids = np.zeros((Q, k), np.int32)
  ranks = np.zeros(Q, np.int32)
  for start in range(0, Q, batch):
    sl = slice(start, start + batch)
    s, i, r = jax.device_get(search(index, q[sl], split.video_index[sl]))
    top_scores[sl], top_ids[sl], ranks[sl] = s, i, r
  # Per-frame engine vectors of the whole corpus, for grounding by frame-query similarity.
  fv = np.concatenate([np.asarray(frame_fn(params, split.features[j:j + batch]))
                       for j in range(0, split.num_videos, batch)])
  starts = np.zeros((Q, k), np.int32)
  ends = np.zeros((Q, k), np.int32)
  sub = max(1, (1 << 25) // (k * fv.shape[1] * fv.shape[2]))  # bounds the gathered block
  progress = Progress("ground top-k videos", Q, "queries", config.log.progress_seconds)
  for start in range(0, Q, sub):
    sl = slice(start, start + sub)
    ids = top_ids[sl]
    a, b = ground(q[sl], fv[ids], split.num_frames[ids])
    starts[sl], ends[sl] = np.asarray(a), np.asarray(b)
    progress.update(min(start + sub, Q))
  if config.eval.grounding == "whole_video":
    starts[:] = 0
    ends = split.num_frames[top_ids] - 1
  spf = split.frame_seconds[top_ids]
  times = np.stack([starts * spf, np.minimum((ends + 1) * spf, split.durations[top_ids])], -1)
  vcmr = [np.column_stack([top_ids[i], times[i], top_scores[i]]) for i in range(Q)]
  # SVMR: ranked windows inside the ground-truth video.
  gt_fv = fv[split.video_index]
  gt_scores = np.einsum("qe,qfe->qf", q, gt_fv)
  svmr = []
  for i in range(Q):
    v = int(split.video_index[i])
    a, b, g = _all_windows(gt_scores[i], int(split.num_frames[v]), k)
    sp = split.frame_seconds[v]
    svmr.append(np.column_stack([np.full(len(a), v), a * sp,
                                 np.minimum((b + 1) * sp, split.durations[v]), g]))
  turn = Turn(rank=ranks, policy_rank=ranks, retrieved=top_ids[:, 0],
              answer=np.ones(Q, bool), pred_time=times[:, 0])
  return RowResult(name=name, orig_rank=ranks, turns=[turn], vcmr=vcmr, svmr=svmr, vr=vcmr)
