"""The notebook API: open a trained run, search its corpus, replay and plot an episode.

  from vsr_jax import api
  run = api.load("runs/demo")          # config.json now; metrics, data, params when first used
  run.metrics["agent_sqr_stage2"]["vr_r1"]
  run.search("a person opens a red door", k=10)          # [Hit(rank, video_id, score, index)]
  ep = run.episode(desc_id, row="agent_sqr_stage2")      # or free text (no ground truth)
  print(ep.summary()); api.plot_episode(ep)

Everything reads the run's eval split (config.data.eval_split), its corpus index and the
checkpoints evaluation read. Episodes run greedy at the evaluation's batch shape (the query
repeated), so an episode of a test query replays its record in predictions/<row>.jsonl.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vsr_jax import calibration, config_lib, evaluate, metrics as metrics_lib, registry
from vsr_jax import rollout, stages
from vsr_jax import workdir as workdir_lib
from vsr_jax.agent import policy
from vsr_jax.data import tokenizer as tokenizer_lib
from vsr_jax.engine import encode
from vsr_jax.engine import index as index_lib
from vsr_jax.engine.towers import DualEncoder


@dataclasses.dataclass(frozen=True)
class Hit:
  rank: int            # 1 = best
  video_id: str
  score: float         # inner product of the query and video vectors
  index: int           # the video's row in the eval split


@dataclasses.dataclass
class Turn:
  """One turn the episode took (turns after the agent answered 'matched' are not listed)."""
  turn: int                   # 1-based
  video_id: str               # the retrieved (top-1) video
  video_index: int
  rank: int | None            # the true video's rank under this turn's query (None: unknown)
  verdict: str                # 'matched' | 'not_matched'
  p_matched: float            # the verifier's probability of 'matched' (1 for the engine row)
  pred_time: tuple            # (start, end) seconds in the retrieved video
  gt_time: tuple | None       # the true span, when the retrieved video is the true one
  iou: float | None           # IoU(pred_time, gt_time) when the retrieved video is the true one
  query_vec: np.ndarray       # [E] the query vector searched with at this turn
  frame_scores: np.ndarray    # [num_frames] query_vec . the engine's frame vectors
  frame_seconds: float        # seconds per model frame of the retrieved video
  duration: float

  @property
  def verdict_prob(self) -> float:
    """The probability of the verdict taken."""
    return self.p_matched if self.verdict == "matched" else 1.0 - self.p_matched


@dataclasses.dataclass
class Episode:
  row: str
  kind: str                   # 'engine' | 'agent'
  query: str
  desc_id: int | None         # None for free text
  gt_video: str | None
  gt_time: tuple | None
  max_turns: int              # T of the row
  turns: list                 # [Turn], the turns taken

  @property
  def final(self) -> Turn:
    return self.turns[-1]

  @property
  def answer(self) -> str:
    return self.final.verdict

  @property
  def retrieved_video(self) -> str:
    return self.final.video_id

  @property
  def final_rank(self) -> int | None:
    return self.final.rank

  def record(self) -> dict:
    """The fields of this query's predictions/<row>.jsonl record that an episode decides (the
    record's per-turn list carries the last turn taken forward to max_turns)."""
    turns = [{"rank": t.rank, "retrieved_video": t.video_id, "answer": t.verdict,
              "pred_time": [round(float(x), 3) for x in t.pred_time],
              # The reference's gate: the IoU counts only on a 'matched' true video.
              "iou_r1": (t.iou or 0.0) if t.verdict == "matched" else 0.0,
              "iou_raw": t.iou or 0.0} for t in self.turns]
    turns += [turns[-1]] * (self.max_turns - len(turns))
    return {"desc_id": self.desc_id, "query": self.query, "gt_video": self.gt_video,
            "orig_rank": self.turns[0].rank, "final_rank": self.final_rank,
            "answer": self.answer, "retrieved_video": self.retrieved_video,
            "pred_time": turns[-1]["pred_time"], "turns": turns}

  def summary(self) -> str:
    head = f"{self.row}: {self.query!r}"
    if self.gt_video is not None:
      head += f"  (desc_id {self.desc_id}, true video {self.gt_video} " \
              f"{_span(self.gt_time)})"
    lines = [head]
    for t in self.turns:
      rank = "" if t.rank is None else f" true rank {t.rank:3d}"
      iou = "" if t.iou is None else f" IoU {t.iou:.2f}"
      lines.append(f"  turn {t.turn}: {t.video_id}{rank}  {t.verdict} "
                   f"(p {t.verdict_prob:.2f})  span {_span(t.pred_time)}{iou}")
    return "\n".join(lines)

  def __repr__(self) -> str:
    return self.summary()


def _span(span) -> str:
  return f"[{span[0]:.1f}, {span[1]:.1f}]s"


def load(workdir: str) -> "Run":
  """A trained run (its config.json; a workdir without one is refused, naming the file)."""
  config = workdir_lib.read_config(workdir)
  workdir_lib.recover(workdir)     # outputs a kill left half-published
  registry.import_extra(config)    # pieces the run registered from outside the package
  return Run(workdir, config)


class Run:
  """A trained run. Cheap to create; the data, engine, index and parameters load when first
  needed and are kept (self._ctx, self._index, ...), as are the jitted functions."""

  def __init__(self, workdir: str, config):
    self.workdir = workdir
    self.config = config
    self._metrics = None
    self._ctx = None
    self._index = None
    self._corpus = None
    self._jitted = {}

  def __repr__(self) -> str:
    return f"Run({self.workdir!r}, stages={tuple(self.config.stages)})"

  # ------------------------------------------------------------------ what the run has

  @property
  def metrics(self) -> dict:
    """metrics.json: {row: {metric: value}} (fractions in [0, 1])."""
    if self._metrics is None:
      path = os.path.join(self.workdir, "metrics.json")
      if not os.path.isfile(path):
        raise workdir_lib.WorkdirError(f"{path} not found: the run has not finished its "
                                       "evaluation (train it to the end, or --mode=eval)")
      self._metrics = workdir_lib.read_json(path)
    return self._metrics

  @property
  def rows(self) -> list[str]:
    """The method rows of the run's config, in config order."""
    return list(config_lib.to_dict(self.config.eval.rows))

  @property
  def trained_rows(self) -> list[str]:
    """The rows whose stage is in config.stages (those evaluation wrote)."""
    return [r for r in self.rows if self.config.eval.rows[r].stage in self.config.stages]

  def predictions(self, row: str) -> dict:
    """predictions/<row>.jsonl as {desc_id: record}."""
    self._row(row)
    path = os.path.join(self.workdir, "predictions", f"{row}.jsonl")
    if not os.path.isfile(path):
      raise workdir_lib.WorkdirError(f"{path} not found: row {row!r} was not evaluated")
    out = {}
    with open(path, encoding="utf-8") as f:
      for line in f:
        record = json.loads(line)
        out[record["desc_id"]] = record
    return out

  # ------------------------------------------------------------------ lazily built state

  @property
  def ctx(self) -> stages.Context:
    if self._ctx is None:
      self._ctx = stages.Context.open(self.config, self.workdir)
    return self._ctx

  @property
  def split(self):
    return self.ctx.splits[self.config.data.eval_split]

  @property
  def index(self):
    """The eval corpus' index (built as evaluation builds it; ScaNN reloads the saved one)."""
    if self._index is None:
      ctx, split = self.ctx, self.split
      videos = encode.encode_videos(ctx.engine, ctx.engine_params, split.features,
                                    split.num_frames, self.config.eval.batch_size)
      self._index = index_lib.build_index(
          self.config, videos,
          directory=os.path.join(self.workdir, "index", self.config.index.backend))
    return self._index

  @property
  def corpus(self) -> rollout.Corpus:
    if self._corpus is None:
      self._corpus = rollout.Corpus.from_split(self.index, self.split)
    return self._corpus

  def _jit(self, key, make):
    if key not in self._jitted:
      self._jitted[key] = make()
    return self._jitted[key]

  # ------------------------------------------------------------------ queries

  def query(self, query) -> tuple:
    """(text, tokens [L], row of the eval split | None) of free text or of a desc_id of the
    eval split."""
    split = self.split
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
      hit = np.flatnonzero(split.desc_ids == int(query))
      if not hit.size:
        raise workdir_lib.WorkdirError(
            f"desc_id {int(query)} is not a query of the {split.name} split of {self.workdir} "
            f"(desc_ids {split.desc_ids.min()}..{split.desc_ids.max()}, {split.num_queries} "
            "queries)")
      i = int(hit[0])
      return split.queries[i], split.tokens[i], i
    if not isinstance(query, str):
      raise config_lib.InputError(f"query {query!r}: free text (str) or a desc_id (int)")
    tokens = self.ctx.tokenizer.encode([query], self.config.data.max_query_len)[0][0]
    if not (tokens != tokenizer_lib.PAD).any():
      raise config_lib.InputError(f"query {query!r} has no words the tokenizer reads")
    return query, tokens, None

  def _batch(self, tokens):
    """tokens [L] repeated to the evaluation's batch shape (same programs, same numbers)."""
    return np.repeat(tokens[None], self.config.eval.batch_size, 0)

  def query_vector(self, query) -> np.ndarray:
    """The engine's vector [E] of free text or of a desc_id."""
    _, tokens, _ = self.query(query)
    ctx = self.ctx
    return encode.encode_queries(ctx.engine, ctx.engine_params, tokens[None],
                                 self.config.eval.batch_size)[0]

  def search(self, query, k: int = 10) -> list[Hit]:
    """The engine's top-k videos of the eval corpus for free text or a desc_id, best first."""
    index_lib.check_top_k(k, self.split.num_videos, "run.search")
    q = self.query_vector(query)
    fn = self._jit(("search", k), lambda: jax.jit(lambda index, q: index.search(q, k)))
    scores, ids = jax.device_get(fn(self.index, self._batch(q)))
    return [Hit(r + 1, self.split.video_ids[int(i)], float(s), int(i))
            for r, (s, i) in enumerate(zip(scores[0], ids[0])) if i >= 0]

  # ------------------------------------------------------------------ episodes

  def _row(self, row: str):
    rows = self.config.eval.rows
    if row not in rows:
      raise config_lib.ConfigError(f"row {row!r}: not a row of {self.workdir}'s "
                                   f"config.eval.rows; rows: {', '.join(self.rows)}")
    return rows[row]

  def _stage_params(self, row: str, stage: str):
    """The row's stage's parameters; a stage this run did not train is named with the row."""
    where = f"row {row!r} needs stage {stage!r}"
    if stage not in self.config.stages and not stages.finished(self.config, self.workdir,
                                                               stage):
      raise workdir_lib.WorkdirError(
          f"{where}, which the run in {self.workdir} did not train (config.stages: "
          f"{', '.join(self.config.stages)}); its rows: {', '.join(self.trained_rows)}")
    try:
      return self.ctx.stage_params(stage)
    except workdir_lib.WorkdirError as e:
      raise workdir_lib.WorkdirError(f"{where}: {e}") from None

  def episode(self, query, row: str | None = None) -> Episode:
    """The greedy episode of method row `row` (default: the last trained row) for free text
    or a desc_id of the eval split (then the ground truth is known)."""
    if row is None:
      if not self.trained_rows:
        raise config_lib.ConfigError(f"{self.workdir}: no row of config.eval.rows has its "
                                     "stage in config.stages")
      row = self.trained_rows[-1]
    spec_row = self._row(row)
    params = self._stage_params(row, spec_row.stage)
    text, tokens, i = self.query(query)
    gt = None if i is None else int(self.split.video_index[i])
    if spec_row.kind == "engine":
      steps = self._engine_steps(row, params, tokens, gt)
    elif spec_row.kind == "agent":
      steps = self._agent_steps(row, spec_row, params, tokens, gt)
    else:
      raise config_lib.ConfigError(f"config.eval.rows.{row}.kind={spec_row.kind!r}: the API "
                                   "replays 'engine' and 'agent' rows")
    return self._episode(row, spec_row.kind, text, i, steps)

  def _engine_steps(self, row, params, tokens, gt) -> dict:
    """The engine row: one turn, the top-1 video, grounded by frame similarity (as
    evaluate.engine_lists grounds it)."""
    ctx, corpus = self.ctx, self.corpus

    def make():
      @jax.jit
      def run(params, corpus, tokens, gt):
        q = ctx.engine.apply({"params": params}, tokens, method=DualEncoder.encode_text)
        _, ids, rank = corpus.index.search_and_rank(q, 1, gt)
        vid = ids[:, 0]
        fv = ctx.engine.apply({"params": params}, corpus.features[vid],
                              method=DualEncoder.frame_vectors)
        scores = jnp.einsum("be,bfe->bf", q, fv)
        start, end = encode.best_window(scores, corpus.num_frames[vid])
        return {"retrieved": vid, "rank": rank, "query": q, "frame_scores": scores,
                "start": start, "end": end}
      return run

    out = jax.device_get(self._jit(("engine", row), make)(
        params, corpus, self._batch(tokens), np.full(self.config.eval.batch_size, gt or 0)))
    out = {k: v[:1] for k, v in out.items()}
    vid = int(out["retrieved"][0])
    start, end = int(out["start"][0]), int(out["end"][0])
    if self.config.eval.grounding == "whole_video":
      start, end = 0, int(self.split.num_frames[vid]) - 1
    spf, dur = float(self.split.frame_seconds[vid]), float(self.split.durations[vid])
    pred = np.array([[start * spf, min((end + 1) * spf, dur)]], np.float32)
    # The engine accepts every top-1: verdict 'matched' with probability 1.
    return {"retrieved": out["retrieved"][None], "rank": out["rank"][None],
            "verdict": np.full((1, 1), policy.MATCHED), "p_matched": np.ones((1, 1)),
            "pred_time": pred[None], "query": out["query"][None],
            "frame_scores": out["frame_scores"][None], "active": np.ones((1, 1), bool)}

  def _agent_steps(self, row, spec_row, params, tokens, gt) -> dict:
    """Greedy rollout.episode as evaluate.agent_row runs it, plus what the episode does not
    return: the verifier's probability and the query-frame similarity per turn."""
    ctx, corpus = self.ctx, self.corpus
    agent, spec = evaluate.agent_episode(ctx, row, spec_row)
    engine = ctx.engine
    run = self._jit(("episode", row), lambda: jax.jit(
        functools.partial(rollout.episode, agent, engine, spec=spec)))
    threshold, sharpen = self._calibrated(row)

    def make_observe():
      @jax.jit
      def observe(params, engine_params, corpus, tokens, vid, q, q0):
        """Per turn (as a batch): the verifier's P(matched) on the turn's observation (the
        engine's view under rollout.view_query's vector) and the query's similarity to the
        retrieved video's frames."""
        frames, nf = corpus.features[vid], corpus.num_frames[vid]
        seen = jnp.broadcast_to(q0, q.shape) if spec.view_query == "original" else q
        view = rollout.engine_view(agent, engine, engine_params, frames, seen)
        out = agent.apply({"params": params}, tokens, frames, nf, num_latents=0,
                          mode="greedy", sigma=1.0, method=policy.Agent.act, **view)
        p = jax.nn.softmax(out["verify"])[:, policy.MATCHED]
        fv = engine.apply({"params": engine_params}, frames, method=DualEncoder.frame_vectors)
        return p, jnp.einsum("be,bfe->bf", q, fv)
      return observe

    batch = self._batch(tokens)
    gts = np.full(len(batch), gt or 0, np.int32)
    # The original query's vector as the evaluation has it (evaluate.split_queries: encoded
    # at its batch shape, outside the episode).
    q0 = encode.encode_queries(engine, ctx.engine_params, batch, len(batch))
    steps = jax.device_get(run(params, ctx.engine_params, corpus, batch, gts,
                               jax.random.PRNGKey(0), orig_query=q0, matched_margin=threshold,
                               span_sharpen=sharpen))
    steps = {k: v[:, :1] for k, v in steps.items()
             if k in ("retrieved", "rank", "verdict", "pred_time", "query", "active")}
    p, scores = jax.device_get(self._jit(("observe", row), make_observe)(
        params, ctx.engine_params, corpus, np.repeat(tokens[None], spec.turns, 0),
        steps["retrieved"][:, 0], steps["query"][:, 0], q0[:1]))
    steps["p_matched"], steps["frame_scores"] = p[:, None], scores[:, None]
    return steps

  def _calibrated(self, row) -> tuple:
    """(matched margins [T] | None, span sharpness | None) the run's evaluation used for the
    row (metrics.json's calibrated thresholds, eval.calibrate); None, None: the argmax, as
    trained (also before any evaluation)."""
    path = os.path.join(self.workdir, "metrics.json")
    m = self.metrics.get(row, {}) if os.path.isfile(path) else {}
    if "verify_threshold" not in m:
      threshold = None
    else:
      final = m["verify_threshold"]
      turns = self.config.eval.rows[row].turns or self.config.eval.turns
      threshold = jnp.asarray(calibration.turn_margins(
          (m.get("go_on_threshold", final), final), turns))
    sharpen = m.get("span_sharpen")
    return threshold, None if sharpen is None else jnp.float32(sharpen)

  def _episode(self, row, kind, text, i, steps) -> Episode:
    """Episode from per-turn arrays [T, 1, ...] (i: the query's row of the eval split)."""
    split = self.split
    gt = None if i is None else int(split.video_index[i])
    gt_time = None if i is None else tuple(float(x) for x in split.times[i])
    turns = []
    T = steps["retrieved"].shape[0]
    for t in range(T):
      if not steps["active"][t, 0]:
        break
      vid = int(steps["retrieved"][t, 0])
      pred = tuple(float(x) for x in steps["pred_time"][t, 0])
      hit = gt is not None and vid == gt
      nf = int(split.num_frames[vid])
      turns.append(Turn(
          turn=t + 1, video_id=split.video_ids[vid], video_index=vid,
          rank=None if gt is None else int(steps["rank"][t, 0]),
          verdict="matched" if steps["verdict"][t, 0] == policy.MATCHED else "not_matched",
          p_matched=float(steps["p_matched"][t, 0]), pred_time=pred,
          gt_time=gt_time if hit else None,
          iou=float(metrics_lib.temporal_iou(np.asarray(pred), np.asarray(gt_time)))
          if hit else None,
          query_vec=np.asarray(steps["query"][t, 0]),
          frame_scores=np.asarray(steps["frame_scores"][t, 0][:nf]),
          frame_seconds=float(split.frame_seconds[vid]), duration=float(split.durations[vid])))
    return Episode(row=row, kind=kind, query=text,
                   desc_id=None if i is None else int(split.desc_ids[i]),
                   gt_video=None if gt is None else split.video_ids[gt], gt_time=gt_time,
                   max_turns=T, turns=turns)


# ---------------------------------------------------------------------------- plotting

def plot_episode(ep: Episode, *, width: float = 9.0, turn_height: float = 2.4):
  """One axes per turn taken: the similarity of that turn's query vector to each frame of the
  retrieved video (engine frame vectors), the predicted span and, when the retrieved video is
  the true one, the true span. Returns the matplotlib Figure."""
  from matplotlib.figure import Figure   # no pyplot: no global figure state to leak
  fig = Figure(figsize=(width, turn_height * len(ep.turns)), layout="constrained")
  axes = fig.subplots(len(ep.turns), 1, squeeze=False)[:, 0]
  for ax, t in zip(axes, ep.turns):
    centres = (np.arange(len(t.frame_scores)) + 0.5) * t.frame_seconds
    ax.plot(centres, t.frame_scores, color="k", lw=1.2, marker=".", label="query · frame")
    ax.axvspan(*t.pred_time, color="tab:blue", alpha=0.25, label="predicted span")
    if t.gt_time is not None:
      ax.axvspan(*t.gt_time, facecolor="none", edgecolor="tab:green", hatch="//", lw=1.5,
                 label="true span")
    ax.set_xlim(0, t.duration)
    rank = "" if t.rank is None else f", true video at rank {t.rank}"
    truth = "" if ep.gt_video is None else (" (the true video)" if t.gt_time is not None
                                            else " (not the true video)")
    ax.set_title(f"turn {t.turn}: {t.video_id}{truth}{rank} — {t.verdict} "
                 f"(p {t.verdict_prob:.2f})", fontsize=9)
    ax.set_ylabel("similarity")
    ax.legend(loc="upper right", fontsize=7)
  axes[-1].set_xlabel("seconds")
  fig.suptitle(f"{ep.row}: {ep.query}", fontsize=10)
  return fig
