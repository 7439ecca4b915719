"""VCMR against VER over the verifier's matched thresholds, for one agent row of a trained run.

  python experiments/threshold_frontier.py --workdir=RUN --row=agent_sqr_stage2 \
      [--split=test] [--view=turn|original] [--sharpen=10]

One greedy pass that never matches (calibration.NEVER) gives every threshold's episodes
(vsr_jax/calibration.py); this prints, for one threshold shared by every turn and for the
(go-on, final) pairs calibration chooses from, VCMR 0.5/R@1, VER and VR R@1 on the split, and
the pairs no other pair beats on both VCMR and VER. On the eval split it is a diagnostic (what
any threshold could give), not a calibration: calibrating on it would flatter the row.

It also prints where turn 1's VCMR goes against the engine's single shot: a turn-1 hit is a right
top-1 (the same for both) that is accepted and grounded at IoU >= 0.5, so per threshold the
share of right top-1s accepted and of wrong ones rejected, and each one's grounding of the
right top-1s (for `agent_no_refine`, a one-turn row: VCMR = right x accepted x grounded).
"""

from __future__ import annotations

import dataclasses

from absl import app, flags
import numpy as np

from vsr_jax import api, calibration, evaluate, metrics

flags.DEFINE_string("workdir", "runs/demo", "A trained run.")
flags.DEFINE_string("row", "agent_sqr_stage2", "An agent row of the run's config.")
flags.DEFINE_string("split", "", "The split ('' = the run's eval split).")
flags.DEFINE_enum("view", "", ["", "turn", "original"], "rollout.view_query ('' = the run's).")
flags.DEFINE_float("sharpen", 0.0, "The span prior's weight times this (0 = as trained).")
FLAGS = flags.FLAGS


def line(threshold, got) -> str:
  return (f"  {str(threshold):>12}  VCMR 0.5/R@1 {100 * got['vcmr_r1_iou0.5']:5.1f}  "
          f"VER {100 * got['ver_acc']:5.1f}  VR R@1 {100 * got['vr_r1']:5.1f}")


def turn_one(turns, engine_turn, split) -> None:
  """Turn 1 against the engine's single shot: right top-1s accepted and grounded."""
  first = turns[0]
  right = engine_turn.rank == 1
  if not np.array_equal(first.rank == 1, right):
    raise AssertionError("turn 1's top-1 is not the engine's: the agent searched another query")
  grounded = lambda t: metrics.temporal_iou(t.pred_time, split.times) >= 0.5
  print(f"turn 1: {100 * right.mean():.1f} % right top-1s; the engine grounds "
        f"{100 * grounded(engine_turn)[right].mean():.1f} % of them at IoU >= 0.5, the agent "
        f"{100 * grounded(first)[right].mean():.1f} %")
  for t in calibration.GRID:
    # The episode's own comparison (one turn: never refined, so it ends there).
    _, accept = calibration.final_turns(first.margin[None], np.zeros((1, len(right)), bool), t)
    print(f"  {t:>12}  accepts {100 * accept[right].mean():5.1f} % of right top-1s, rejects "
          f"{100 * (~accept[~right]).mean():5.1f} % of wrong ones")


def main(_):
  run = api.load(FLAGS.workdir)
  ctx, config = run.ctx, run.config
  split = ctx.splits[FLAGS.split or config.data.eval_split]
  agent, spec = evaluate.agent_episode(ctx, FLAGS.row, config.eval.rows[FLAGS.row])
  if FLAGS.view:
    spec = dataclasses.replace(spec, view_query=FLAGS.view)
  corpus = evaluate.corpus_of(ctx, split, directory=None)
  queries = evaluate.split_queries(ctx, split)
  turns, _ = evaluate.greedy_turns(config, FLAGS.row, agent,
                                   ctx.stage_params(config.eval.rows[FLAGS.row].stage),
                                   ctx.engine, ctx.engine_params, split, corpus, spec, ctx.mesh,
                                   calibration.NEVER, FLAGS.sharpen or None, queries)
  engine = evaluate.engine_single_shot(config, ctx.engine, ctx.engine_params, split,
                                       corpus.index, queries=queries)
  e = engine.turns[0]
  got = metrics.fig_metrics(final_rank=e.rank, orig_rank=e.rank, answer=e.answer,
                            pred_time=e.pred_time, gt_time=split.times)
  print(f"engine_single_shot on {split.name}: " + line("every top-1", got).strip())
  turn_one(turns, e, split)
  at = {t: evaluate.calibration_metrics(turns, split, t) for t in calibration.candidates(1)}
  print(f"{FLAGS.row} on {split.name} (view {spec.view_query}), one threshold for every turn:")
  for t, got in at.items():
    print(line(t, got))
  if spec.turns == 1:
    return
  pairs = {t: evaluate.calibration_metrics(turns, split, t)
           for t in calibration.candidates(spec.turns)}
  key = lambda g: (g["vcmr_r1_iou0.5"], g["ver_acc"])
  beats = lambda a, b: a[0] >= b[0] and a[1] >= b[1] and a != b
  front = [t for t, g in pairs.items()
           if not any(beats(key(o), key(g)) for o in pairs.values())]
  print("(go-on, final) pairs no other pair beats on both VCMR and VER:")
  for t in sorted(front, key=lambda t: -pairs[t]["vcmr_r1_iou0.5"]):
    print(line(t, pairs[t]))


if __name__ == "__main__":
  app.run(main)
