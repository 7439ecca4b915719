"""VCMR against VER over the verifier's matched thresholds, for one agent row of a trained run.

  python experiments/threshold_frontier.py --workdir=RUN --row=agent_sqr_stage2 \
      [--split=test] [--view=turn|original]

One greedy pass that never matches (calibration.NEVER) gives every threshold's episodes
(vsr_jax/calibration.py); this prints, for one threshold shared by every turn and for the
(go-on, final) pairs calibration chooses from, VCMR 0.5/R@1, VER and VR R@1 on the split, and
the pairs no other pair beats on both VCMR and VER. On the eval split it is a diagnostic (what
any threshold could give), not a calibration: calibrating on it would flatter the row.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from vsr_jax import api, calibration, evaluate

flags.DEFINE_string("workdir", "runs/demo", "A trained run.")
flags.DEFINE_string("row", "agent_sqr_stage2", "An agent row of the run's config.")
flags.DEFINE_string("split", "", "The split ('' = the run's eval split).")
flags.DEFINE_enum("view", "", ["", "turn", "original"], "rollout.view_query ('' = the run's).")
FLAGS = flags.FLAGS


def line(threshold, got) -> str:
  return (f"  {str(threshold):>12}  VCMR 0.5/R@1 {100 * got['vcmr_r1_iou0.5']:5.1f}  "
          f"VER {100 * got['ver_acc']:5.1f}  VR R@1 {100 * got['vr_r1']:5.1f}")


def main(_):
  run = api.load(FLAGS.workdir)
  ctx, config = run.ctx, run.config
  split = ctx.splits[FLAGS.split or config.data.eval_split]
  agent, spec = evaluate.agent_episode(ctx, FLAGS.row, config.eval.rows[FLAGS.row])
  if FLAGS.view:
    spec = dataclasses.replace(spec, view_query=FLAGS.view)
  corpus = evaluate.corpus_of(ctx, split, directory=None)
  turns, _ = evaluate.greedy_turns(config, FLAGS.row, agent,
                                   ctx.stage_params(config.eval.rows[FLAGS.row].stage),
                                   ctx.engine, ctx.engine_params, split, corpus, spec, ctx.mesh,
                                   calibration.NEVER, None, evaluate.split_queries(ctx, split))
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
