"""Evaluation: method rows under the FIG and TVR protocols, prediction export, the table.

A method row is described in config (eval.rows.<name> = dict(kind, stage, turns, refine)); its
kind is a registered evaluator (`engine`: the engine alone; `agent`: greedy episodes of the
stage's agent). Each row is evaluated into a `RowResult`; `write_outputs` stages every row's
files and metrics.json, then publishes them into the output folder (metrics.json last): the
run's workdir, or <workdir>/evals/<name>/ for another evaluation of a trained run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vsr_jax import calibration, config_lib, hosts, registry, rollout, sharding
from vsr_jax import metrics as metrics_lib
from vsr_jax import workdir as workdir_lib
from vsr_jax.agent import policy
from vsr_jax.data import store
from vsr_jax.engine import encode, query_cache
from vsr_jax.engine import index as index_lib
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
  # [Q] the index's own GT rank; `rank` counts among the videos not rejected earlier in the
  # episode (rollout.mask_rejected; the same numbers without it). None: equal to rank.
  engine_rank: np.ndarray | None = None
  active: np.ndarray | None = None    # [Q] bool: the episode took this turn (None: all did)
  refined: np.ndarray | None = None   # [Q] bool: it refined its query at this turn
  margin: np.ndarray | None = None    # [Q] p(matched)'s log-odds at this turn (calibration)


@dataclasses.dataclass
class RowResult:
  name: str
  orig_rank: np.ndarray       # [Q]
  turns: list                 # [Turn], the last one is final
  vcmr: list                  # [Q] arrays [n, 4] (video_idx, start, end, score)
  svmr: list
  vr: list
  # Calibrated (eval.calibrate): p(matched), or (go-on, final); None: the argmax.
  verify_threshold: float | tuple | None = None
  span_sharpen: float | None = None       # calibrated span prior sharpness; None: as trained


def path_metrics(turns: list) -> dict:
  """The cost of the retrieval path, per query: turns taken (each one index search), query
  refinements, and (`resolved`) the share of queries whose episode ended at each turn."""
  Q = len(turns[0].rank)
  active = np.stack([np.ones(Q, bool) if t.active is None else t.active for t in turns])
  refined = np.stack([np.zeros(Q, bool) if t.refined is None else t.refined for t in turns])
  last = active.sum(0)                      # turns taken; episodes stop at their first no-go
  return {"turns_used": float(last.mean()), "searches": float(last.mean()),
          "refinements": float(refined.sum(0).mean()),
          "resolved": [float(np.mean(last == t + 1)) for t in range(len(turns))]}


def row_metrics(row: RowResult, split) -> dict:
  def fig(turn: Turn):
    return metrics_lib.fig_metrics(final_rank=turn.rank, orig_rank=row.orig_rank,
                                   answer=turn.answer, pred_time=turn.pred_time,
                                   gt_time=split.times)
  out = fig(row.turns[-1])
  path = path_metrics(row.turns)
  resolved = path.pop("resolved")
  out.update(path)
  # Each turn's share of the queries whose episode ended there.
  out["per_turn"] = [dict(fig(t), resolved=r) for t, r in zip(row.turns, resolved)]
  if row.turns[0].margin is not None:
    # The verifier apart from its threshold: AUC of its margins for "the top-1 is right" over
    # the queries that took the turn, and over each query's last verdict.
    Q = len(row.orig_rank)
    active = np.stack([np.ones(Q, bool) if t.active is None else t.active for t in row.turns])
    margins = np.stack([t.margin for t in row.turns])
    right = np.stack([t.rank == 1 for t in row.turns])
    # (Left out where one class is absent: the AUC is undefined there.)
    aucs = [(entry, metrics_lib.verify_auc(margins[t][active[t]], right[t][active[t]]))
            for t, entry in enumerate(out["per_turn"])]
    last, q = active.sum(0) - 1, np.arange(Q)
    aucs.append((out, metrics_lib.verify_auc(margins[last, q], right[last, q])))
    for where, auc in aucs:
      if auc is not None:
        where["ver_auc"] = auc
  out.update(metrics_lib.tvr_metrics(vcmr=row.vcmr, svmr=row.svmr, vr=row.vr,
                                     gt_video=split.video_index, gt_windows=split.times))
  if row.verify_threshold is not None:     # the final turn's; go-on: the turns before it
    go_on, final = ((None, row.verify_threshold) if np.isscalar(row.verify_threshold)
                    else row.verify_threshold)
    out["verify_threshold"] = final
    if go_on is not None:
      out["go_on_threshold"] = go_on
  if row.span_sharpen is not None:
    out["span_sharpen"] = row.span_sharpen
  return out


def prediction_rows(row: RowResult, split):
  """One record per query, with the reference evaluator's fields (METHOD.md section 7): a turn's
  `iou_r1` is its span's IoU only when its verdict is `matched` AND its top-1 video is the
  ground truth, else 0 (what mIoU@R1 and IoU@theta@R1 average); `iou_raw` is the ungated IoU.
  `rank` is the GT rank at the turn (the reference's `policy_rank` for the per-turn R@k), among
  the videos not rejected earlier under rollout.mask_rejected (`engine_rank`: the index's)."""
  final = row.turns[-1]
  for i in range(split.num_queries):
    gt = int(split.video_index[i])
    turns = []
    for t in row.turns:
      iou = float(metrics_lib.temporal_iou(t.pred_time[i], split.times[i]))
      # The same gate as metrics.fig_metrics (ranks agree with the top-1: rank 1 <=> hit).
      counts = bool(t.answer[i]) and int(t.retrieved[i]) == gt
      turns.append({
          "rank": int(t.rank[i]), "policy_rank": int(t.policy_rank[i]),
          "engine_rank": int((t.rank if t.engine_rank is None else t.engine_rank)[i]),
          "iou_r1": iou if counts else 0.0, "iou_raw": iou,
          "retrieved_video": split.video_ids[int(t.retrieved[i])],
          "answer": "matched" if t.answer[i] else "not_matched",
          "pred_time": [round(float(x), 3) for x in t.pred_time[i]],
      })
    yield {
        "desc_id": int(split.desc_ids[i]), "query": split.queries[i],
        "gt_video": split.video_ids[gt], "gt_time": [float(x) for x in split.times[i]],
        "orig_rank": int(row.orig_rank[i]), "final_rank": int(final.rank[i]),
        "final_iou_r1": turns[-1]["iou_r1"], "iou_raw": turns[-1]["iou_raw"],
        "answer": turns[-1]["answer"], "pred_time": turns[-1]["pred_time"],
        "retrieved_video": turns[-1]["retrieved_video"], "turns": turns,
    }


def write_outputs(workdir: str, rows: list, split, *, main_row: str | None = None,
                  notes: dict | None = None) -> dict:
  """Writes predictions, submissions and metrics.json for all rows (process 0 of a multi-host
  run; every process returns the metrics). notes: entries added to every row's metrics."""
  all_metrics = {row.name: {**row_metrics(row, split), **(notes or {})} for row in rows}
  hosts.on_primary(lambda: _write_outputs(workdir, rows, split, all_metrics, main_row),
                   "evaluation outputs")
  return all_metrics


def _write_outputs(workdir: str, rows: list, split, all_metrics: dict, main_row) -> None:
  staging = workdir_lib.staging_dir(workdir)
  os.makedirs(os.path.join(staging, "predictions"))
  os.makedirs(os.path.join(staging, "submissions"))
  for row in rows:
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


def format_table(all_metrics: dict) -> str:
  """Method rows x FIG columns (percent, mean rank as is), plus per-turn VR R@1."""
  cols = list(TABLE_COLUMNS)
  max_turns = max(len(m["per_turn"]) for m in all_metrics.values())
  head = ["method"] + [c.replace("vcmr_r1_iou", "vcmr@") for c in cols] + ["turns"] + [
      f"t{t + 1}_vr_r1" for t in range(max_turns)]
  lines = []
  for name, m in all_metrics.items():
    cells = [name]
    for c in cols:
      cells.append(f"{m[c]:.1f}" if c == "mean_rank" else f"{100 * m[c]:.1f}")
    cells.append(f"{m['turns_used']:.2f}" if "turns_used" in m else "")
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


@dataclasses.dataclass
class EngineLists:
  """The engine's top-k for given query vectors, grounded by frame-query similarity."""
  scores: np.ndarray        # [Q, k]
  ids: np.ndarray           # [Q, k]
  ranks: np.ndarray         # [Q]
  times: np.ndarray         # [Q, k, 2] seconds
  gt_frame_scores: np.ndarray  # [Q, F] the query against the ground truth's frames
  valid: np.ndarray         # [Q, k] False where ScaNN listed fewer than k videos

  def vcmr(self):
    """Per query [n, 4] rows (video, start, end, score), best first."""
    return [np.column_stack([self.ids[i], self.times[i], self.scores[i]])[self.valid[i]]
            for i in range(len(self.ids))]


# Grounding scores every frame of a corpus up to this size per query block (else gathers the
# top-k videos' frames).
SCORE_ALL_FRAMES = 1 << 22


# Module level (modules and sizes static): every row of an evaluation, and every evaluation in
# a process, reuses one compilation per shape.
@functools.partial(jax.jit, static_argnums=0)
def _frame_vectors(engine, params, frames):
  return engine.apply({"params": params}, frames, method=type(engine).frame_vectors)


@functools.partial(jax.jit, static_argnames="k")
def _search_and_rank(index, q, gt, *, k: int):
  return index.search_and_rank(q, k, gt)


@jax.jit
def _ground(q, fv, nf):
  s = jnp.einsum("be,bkfe->bkf", q, fv)
  return encode.best_window(s, nf)


@functools.partial(jax.jit, static_argnames="frames")
def _ground_all(q, fv_flat, ids, nf, *, frames: int):
  """Scores against every frame of the corpus in one matmul, then the top-k videos' rows."""
  F = frames
  s = (q @ fv_flat.T).reshape(q.shape[0], -1, F)
  s = jnp.take_along_axis(s, jnp.broadcast_to(ids[:, :, None], ids.shape + (F,)), axis=1)
  return encode.best_window(s, nf)


def engine_lists(config, engine, params, split, index, q: np.ndarray) -> EngineLists:
  """Top-k (eval.tvr_top_k) videos for query vectors q [Q, E], each with its best window."""
  k = min(config.eval.tvr_top_k, split.num_videos)
  check_top_k(k, split.num_videos, "eval.tvr_top_k")
  batch = config.eval.batch_size
  frame_fn = functools.partial(_frame_vectors, engine)
  search = functools.partial(_search_and_rank, k=k)
  ground_all = functools.partial(_ground_all, frames=split.features.shape[1])

  Q = split.num_queries
  top_scores = np.zeros((Q, k), np.float32)
  top_ids = np.zeros((Q, k), np.int32)
  ranks = np.zeros(Q, np.int32)
  for start in range(0, Q, batch):
    sl = slice(start, start + batch)
    s, i, r = hosts.fetch(search(index, q[sl], split.video_index[sl]))
    top_scores[sl], top_ids[sl], ranks[sl] = s, i, r
  valid = top_ids >= 0                       # ScaNN may list fewer than k
  safe_ids = np.where(valid, top_ids, 0)
  V, F = split.num_videos, split.features.shape[1]
  # A corpus of up to 4M frames: every video's frame vectors, and all of them scored per
  # query block (one matmul, no copies). A larger one: the frame vectors of the listed and
  # ground-truth videos only (read from the store, which may be a memory map on disk), and
  # each query's top-k gathered from them: memory bounded by the queries, not the corpus.
  score_all = V * F <= SCORE_ALL_FRAMES
  needed = (np.arange(V) if score_all else     # sorted: a video's row is its position
            np.unique(np.concatenate([safe_ids.ravel(), split.video_index])))
  local = lambda ids: np.searchsorted(needed, ids).astype(np.int32)
  fv = np.concatenate([hosts.fetch(frame_fn(params, np.asarray(
      split.features[needed[j:j + batch]]))) for j in range(0, len(needed), batch)])
  starts = np.zeros((Q, k), np.int32)
  ends = np.zeros((Q, k), np.int32)
  E = fv.shape[-1]
  if score_all:
    fv_flat = jnp.asarray(fv.reshape(V * F, E))
    sub = max(1, (1 << 25) // (V * F))
  else:
    sub = max(1, (1 << 25) // (k * F * E))      # bounds the gathered block
  progress = Progress("ground top-k videos", Q, "queries", config.log.progress_seconds)
  for start in range(0, Q, sub):
    sl = slice(start, start + sub)
    ids = safe_ids[sl]
    if score_all:
      a, b = ground_all(q[sl], fv_flat, ids, split.num_frames[ids])
    else:
      a, b = _ground(q[sl], fv[local(ids)], split.num_frames[ids])
    starts[sl], ends[sl] = hosts.fetch((a, b))
    progress.update(min(start + sub, Q))
  if config.eval.grounding == "whole_video":
    starts[:] = 0
    ends = split.num_frames[safe_ids] - 1
  spf = split.frame_seconds[safe_ids]
  times = np.stack([starts * spf, np.minimum((ends + 1) * spf, split.durations[safe_ids])], -1)
  return EngineLists(top_scores, top_ids, ranks, times,
                     np.einsum("qe,qfe->qf", q, fv[local(split.video_index)]), valid)


def _svmr_from_scores(split, window_scores_fn, k: int):
  """Ranked windows inside each query's ground-truth video."""
  out = []
  for i in range(split.num_queries):
    v = int(split.video_index[i])
    a, b, g = window_scores_fn(i, int(split.num_frames[v]), k)
    sp = split.frame_seconds[v]
    out.append(np.column_stack([np.full(len(a), v), a * sp,
                                np.minimum((b + 1) * sp, split.durations[v]), g]))
  return out


def engine_single_shot(config, engine, params, split, index, *,
                       name="engine_single_shot", queries=None) -> RowResult:
  """The engine alone: top-k retrieval with the original query, grounding by frame scores.
  queries [Q, E]: the engine's vectors of the split's queries, when the caller has them."""
  q = (encode.encode_queries(engine, params, split.tokens, config.eval.batch_size)
       if queries is None else queries)
  lists = engine_lists(config, engine, params, split, index, q)
  vcmr = lists.vcmr()
  k = lists.ids.shape[1]
  svmr = _svmr_from_scores(split, lambda i, n, top: _all_windows(lists.gt_frame_scores[i], n,
                                                                  top), k)
  Q = split.num_queries
  turn = Turn(rank=lists.ranks, policy_rank=lists.ranks, retrieved=lists.ids[:, 0],
              answer=np.ones(Q, bool), pred_time=lists.times[:, 0])
  return RowResult(name=name, orig_rank=lists.ranks, turns=[turn], vcmr=vcmr, svmr=svmr,
                   vr=vcmr)


def _pad_batch(arrays, size: int):
  real = len(arrays[0])
  if real == size:
    return arrays, real
  return [np.concatenate([a, np.repeat(a[-1:], size - real, 0)]) for a in arrays], real


_greedy_episode = jax.jit(rollout.episode, static_argnums=(0, 1), static_argnames="spec")


def greedy_turns(config, name, agent, params, engine, engine_params, split, corpus, spec,
                 mesh=None, threshold: float | None = None, sharpen: float | None = None,
                 queries=None):
  """Greedy episodes of an agent over the whole split: ([Turn] per turn, [Q, E] final queries).

  mesh: the episode's batch is split over its 'data' axis (the corpus as `corpus` holds it).
  threshold: p(matched) at which the verdict is `matched`, or a (go-on, final) pair: every
  turn's but the last, the last's (None: the argmax).
  sharpen: the span prior's weight times this (None: as trained).
  queries [Q, E]: the engine's vectors of the split's queries (split_queries), read by the
  episodes instead of encoding them again; None: encoded in each episode.
  """
  batch = config.eval.batch_size
  margin = (None if threshold is None else
            jnp.asarray(calibration.turn_margins(threshold, spec.turns)))
  run = functools.partial(_greedy_episode, agent, engine, spec=spec, matched_margin=margin,
                          span_sharpen=None if sharpen is None else jnp.float32(sharpen))
  place = (lambda x: x) if mesh is None else functools.partial(
      hosts.put_rows, sharding=sharding.batch_sharded(mesh))
  rng = jax.random.PRNGKey(0)
  Q, T = split.num_queries, spec.turns
  keep = ("retrieved", "rank", "engine_rank", "policy_rank", "verdict", "pred_time", "active",
          "refines", "verify_margin")
  per_turn = {k: [] for k in keep}
  finals = []
  progress = Progress(f"evaluate {name}", Q, "queries", config.log.progress_seconds)
  for start in range(0, Q, batch):
    rows = [split.tokens[start:start + batch], split.video_index[start:start + batch]]
    if queries is not None:
      rows.append(queries[start:start + batch])
    (tokens, gt, *q0), real = _pad_batch(rows, batch)
    steps = hosts.fetch(run(params, engine_params, corpus, place(tokens), place(gt), rng,
                            orig_query=place(q0[0]) if q0 else None))
    for k in keep:
      per_turn[k].append(steps[k][:, :real])
    finals.append(steps["final_query"][:real])
    progress.update(min(start + batch, Q))
  per_turn = {k: np.concatenate(v, 1) for k, v in per_turn.items()}
  turns = [Turn(rank=per_turn["rank"][t], engine_rank=per_turn["engine_rank"][t],
                active=per_turn["active"][t], refined=per_turn["refines"][t],
                policy_rank=per_turn["policy_rank"][t],
                retrieved=per_turn["retrieved"][t],
                answer=per_turn["verdict"][t] == policy.MATCHED,
                pred_time=per_turn["pred_time"][t],
                margin=per_turn["verify_margin"][t]) for t in range(T)]
  return turns, np.concatenate(finals)


def agent_row(config, name, agent, params, engine, engine_params, split, corpus, spec,
              mesh=None, threshold: float | None = None, sharpen: float | None = None,
              queries=None):
  """Greedy episodes of an agent over the whole split, as a method row (greedy_turns' args)."""
  if queries is None:
    queries = encode.encode_queries(engine, engine_params, split.tokens, config.eval.batch_size)
  turns, finals = greedy_turns(config, name, agent, params, engine, engine_params, split,
                               corpus, spec, mesh, threshold, sharpen, queries)
  # TVR lists: the engine's top-k under the final query; the agent's own answer (its final
  # video with its span) goes first.
  lists = engine_lists(config, engine, engine_params, split, corpus.index, finals)
  final = turns[-1]
  vcmr = []
  for i, rows in enumerate(lists.vcmr()):
    own = rows[:, 0] == final.retrieved[i]
    top = rows[0, 3] + 1.0 if len(rows) else 1.0
    head = np.array([[final.retrieved[i], *final.pred_time[i], top]])
    vcmr.append(np.concatenate([head, rows[~own]])[:len(rows)])
  svmr = _agent_svmr(config, agent, params, engine, engine_params, split, lists.ids.shape[1],
                     queries, sharpen)
  return RowResult(name=name, orig_rank=turns[0].rank, turns=turns, vcmr=vcmr, svmr=svmr,
                   vr=vcmr, verify_threshold=threshold, span_sharpen=sharpen)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames="k")
def _top_spans(agent, engine, params, engine_params, tokens, q, frames, nf, sharpen, *, k: int):
  view = rollout.engine_view(agent, engine, engine_params, frames, q)
  out = agent.apply({"params": params}, tokens, frames, nf, num_latents=0, mode="greedy",
                    sigma=1.0, method=policy.Agent.act, span_sharpen=sharpen, **view)
  lp = jax.nn.log_softmax(out["span"].reshape(tokens.shape[0], -1))
  return jax.lax.top_k(lp, k)


def _agent_svmr(config, agent, params, engine, engine_params, split, k: int, queries,
                sharpen=None):
  """The agent's top-k spans inside each query's ground-truth video (its span head); queries
  [Q, E]: the engine's vectors of the split's queries."""
  batch = config.eval.batch_size
  sharpen = None if sharpen is None else jnp.float32(sharpen)

  spans = functools.partial(_top_spans, agent, engine, k=k)
  Q, F = split.num_queries, split.features.shape[1]
  scores, flat = np.zeros((Q, k), np.float32), np.zeros((Q, k), np.int32)
  for start in range(0, Q, batch):
    vid = split.video_index[start:start + batch]
    (tokens, q, frames, nf), real = _pad_batch(
        [split.tokens[start:start + batch], queries[start:start + batch], split.features[vid],
         split.num_frames[vid]], batch)
    s, f = hosts.fetch(spans(params, engine_params, tokens, q, frames, nf, sharpen))
    scores[start:start + real], flat[start:start + real] = s[:real], f[:real]

  def windows(i, n, top):
    ok = np.isfinite(scores[i])          # spans outside the video have probability 0
    return flat[i][ok] // F, flat[i][ok] % F, scores[i][ok]

  return _svmr_from_scores(split, windows, k)


# ---------------------------------------------------------------------------- method rows

@dataclasses.dataclass(frozen=True)
class RowKind:
  """A registered kind of method row: evaluate(ctx, name, row, split, corpus) -> RowResult
  (ctx: the run's stages.Context; row: its eval.rows entry; corpus: rollout.Corpus, or None
  for a kind that does not read it).

  stage: what the row's `stage` names: 'agent' (a stage that trains an agent), 'engine' (one
  that does not) or '' (none: the row reads no trained parameters and is evaluated whatever
  config.stages holds). corpus: it reads the engine's index of the split (built once, when
  the first such row comes). check(config, name): more config checks, run by validation."""
  evaluate: object
  stage: str = "agent"
  corpus: bool = True
  check: object = None


def split_queries(ctx, split, stage: str = "engine") -> np.ndarray:
  """[Q, E] the engine's (stage `stage`'s parameters) vectors of a split's queries, encoded
  once per evaluation: every row and calibration pass on the split reads them, instead of each
  episode encoding its original queries again."""
  key = ("queries", stage, split.name, split.num_queries)
  if key not in ctx.cache:
    params, config = ctx.stage_params(stage), ctx.config
    name = f"encode {split.name} queries"
    if query_cache.frozen_text(ctx.engine):
      # A frozen tower's pooled encodings: the run's cache of the whole split when it has one
      # (training read it), else encoded by length; evaluation never writes the cache.
      whole = ctx.splits.get(split.name)
      pooled = None if whole is None else query_cache.cached(
          ctx.engine, params, whole.tokens, ctx.workdir, split.name)
      if pooled is None:
        pooled = query_cache.encode_pooled(ctx.engine, params, split.tokens, name,
                                           config.log.progress_seconds)
      ctx.cache[key] = query_cache.project_all(ctx.engine, params, pooled[:split.num_queries],
                                               config.eval.batch_size)
    else:
      ctx.cache[key] = encode.encode_queries(ctx.engine, params, split.tokens,
                                             config.eval.batch_size, name=name,
                                             every_seconds=config.log.progress_seconds)
  return ctx.cache[key]


def _engine_row(ctx, name, row, split, corpus):
  return engine_single_shot(ctx.config, ctx.engine, ctx.stage_params(row.stage), split,
                            corpus.index, name=name, queries=split_queries(ctx, split, row.stage))


def agent_episode(ctx, name, row):
  """(agent module, greedy EpisodeConfig) of agent row `name` (its eval.rows entry `row`)."""
  config = ctx.config
  stage = registry.STAGES.get(row.stage, f"eval.rows.{name}.stage")
  agent = stage.agent(ctx)
  if agent is None:
    raise config_lib.ConfigError(f"config.eval.rows.{name}.stage={row.stage!r}: an agent row "
                                 "needs a stage that trains an agent")
  refine = row.refine or stage.refiner(config)
  if registry.REFINERS.get(refine).head != agent.refine:
    raise config_lib.ConfigError(
        f"config.eval.rows.{name}.refine={refine!r} reads the {registry.REFINERS.get(refine).head}"
        f" head; stage {row.stage!r} trained an agent with the {agent.refine} head")
  spec = rollout.EpisodeConfig(turns=row.turns or config.eval.turns,
                               num_latents=config.agent.num_latents, refine=refine,
                               sigma=config.agent.sigma, mode="greedy",
                               mask_rejected=config.rollout.mask_rejected,
                               view_query=config.rollout.view_query)
  return agent, spec


def calibration_metrics(turns: list, split, threshold) -> dict:
  """The FIG metrics at `threshold` of the episodes whose never-matching pass is `turns`."""
  stack = lambda field: np.stack([getattr(t, field) for t in turns])
  last, answer = calibration.final_turns(stack("margin"), stack("refined"), threshold)
  q = np.arange(len(last))
  return metrics_lib.fig_metrics(
      final_rank=stack("rank")[last, q], orig_rank=turns[0].rank, answer=answer,
      pred_time=stack("pred_time")[last, q], gt_time=split.times)


def calibration_score(turns: list, split, threshold) -> float:
  """VCMR 0.5/R@1 at `threshold` of the episodes whose never-matching pass is `turns`."""
  return calibration_metrics(turns, split, threshold)[calibration.METRIC]


def calibrated_threshold(ctx, name, row, agent, spec) -> tuple:
  """The matched threshold and span prior sharpness (None for an agent without the prior) of
  agent row `name`, chosen on config.eval.calibrate's split (once per stage and episode;
  vsr_jax/calibration.py)."""
  config = ctx.config
  split_name = config.eval.calibrate
  key = ("calibration", split_name, row.stage, spec)
  if key in ctx.cache:
    return ctx.cache[key]
  if ("calibration_corpus", split_name) not in ctx.cache:
    cal = ctx.splits[split_name]      # loaded at the start (calibration.with_calibration_split)
    calibration.check_split(split_name, cal.name)
    ctx.cache["calibration_corpus", split_name] = (cal, corpus_of(ctx, cal, directory=None))
  cal, corpus = ctx.cache["calibration_corpus", split_name]
  params = ctx.stage_params(row.stage)
  # One pass that never matches serves every threshold (calibration.final_turns); one per
  # sharpness, which changes the spans only.
  scores, ver = {}, {}
  for m in calibration.SHARPEN_GRID if agent.span_prior else (None,):
    turns, _ = greedy_turns(config, f"calibrate {name}", agent, params, ctx.engine,
                            ctx.engine_params, cal, corpus, spec, ctx.mesh, calibration.NEVER,
                            m, split_queries(ctx, cal))
    for t in calibration.candidates(spec.turns):
      got = calibration_metrics(turns, cal, t)
      scores[t, m or 1.0] = got[calibration.METRIC]
      ver[t] = got["ver_acc"]        # the verdicts, so VER, do not depend on the sharpness
  hits = int(np.sum(turns[0].rank == 1))     # the first search is the same at every threshold
  argmax = calibration.argmax(spec.turns)
  min_ver = ver[argmax] if config.eval.calibrate_keep_ver else None
  threshold, sharpen = calibration.choose(scores, split=split_name, row=name,
                                          first_turn_hits=hits, ver=ver, min_ver=min_ver)
  logging.info("%s: matched threshold %s, span prior x%g (VCMR 0.5/R@1 %.1f, VER %.1f on %s; "
               "argmax VER %.1f)", name, threshold, sharpen, 100 * scores[threshold, sharpen],
               100 * ver[threshold], split_name, 100 * ver[argmax])
  ctx.cache[key] = threshold, (sharpen if agent.span_prior else None)
  return ctx.cache[key]


def _agent_row(ctx, name, row, split, corpus):
  agent, spec = agent_episode(ctx, name, row)
  threshold, sharpen = (calibrated_threshold(ctx, name, row, agent, spec)
                        if ctx.config.eval.calibrate else (None, None))
  return agent_row(ctx.config, name, agent, ctx.stage_params(row.stage), ctx.engine,
                   ctx.engine_params, split, corpus, spec, mesh=ctx.mesh, threshold=threshold,
                   sharpen=sharpen, queries=split_queries(ctx, split))


registry.ROW_KINDS.register("engine", RowKind(_engine_row, stage="engine"))
registry.ROW_KINDS.register("agent", RowKind(_agent_row))


def corpus_of(ctx, split, directory: str | None) -> rollout.Corpus:
  """A split's videos through the frozen engine, indexed (config.index; directory: where a
  backend that saves its index puts it, None for a temporary one) and held as config.eval says."""
  config = ctx.config
  videos = encode.encode_videos(ctx.engine, ctx.engine_params, split.features, split.num_frames,
                                config.eval.batch_size, name=f"encode {split.name} corpus",
                                every_seconds=config.log.progress_seconds)
  index = index_lib.build_index(config, videos, mesh=ctx.mesh, directory=directory)
  return rollout.Corpus.from_split(index, split, ctx.mesh, config.eval.frame_store)


def evaluate_run(ctx, out_dir: str) -> dict:
  """Every row of config.eval.rows whose stage is in config.stages (or that reads no stage), on
  config.data.eval_split; writes the outputs into out_dir (published atomically, metrics.json
  last)."""
  config = ctx.config
  split = store.first_queries(ctx.splits[config.data.eval_split], config.eval.max_queries)
  corpus = None      # built for the first row that reads it
  results = []
  # Config order (to_dict keeps it; ConfigDict.items() would sort the names).
  for name in config_lib.to_dict(config.eval.rows):
    row = config.eval.rows[name]
    if row.stage and row.stage not in config.stages:
      logging.info("row %s skipped: stage %s is not in config.stages", name, row.stage)
      continue
    kind = registry.ROW_KINDS.get(row.kind, f"eval.rows.{name}.kind")
    if kind.corpus and corpus is None:
      corpus = corpus_of(ctx, split, os.path.join(out_dir, "index", config.index.backend))
    results.append(kind.evaluate(ctx, name, row, split, corpus))
  if not results:
    raise config_lib.ConfigError("config.eval.rows: no row's stage is in config.stages")
  names = [r.name for r in results]
  main_row = config.eval.submission_row if config.eval.submission_row in names else names[-1]
  # An index that does not rank past its list (ScaNN, beyond='bound') says so in every row:
  # ranks there are this number, so mrr and mean_rank are bounds; R@k below it is the list's.
  cap = getattr(corpus.index, "beyond_rank", None) if corpus else None
  notes = {"ranks_past_list_reported_as": cap} if cap else None
  all_metrics = write_outputs(out_dir, results, split, main_row=main_row, notes=notes)
  print(format_table(all_metrics), flush=True)
  return all_metrics
