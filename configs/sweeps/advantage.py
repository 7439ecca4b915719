"""Ablation: the GRPO advantage estimator (grpo.advantage: grpo | dr_grpo | rloo).

  python -m vsr_jax.sweep --sweep=configs/sweeps/advantage.py[:smoke] --workdir=DIR

grpo: (r - mean) / std over the group; dr_grpo: r - mean (no std); rloo: leave-one-out mean
(vsr_jax/objectives/grpo.py). Read by stage 2 only: the points share the engine and the
stage-1 agent of each seed. Default: configs/synthetic.py's full budgets, 3 seeds, without the
HQR stage. `:reduced`: the same on
configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke, grpo and rloo, one seed.
"""

from vsr_jax import defaults, sweep



ROWS = defaults.default_rows("agent_sqr_stage1", "agent_sqr_stage2")


def get_sweep(arg=None):
  preset, world = sweep.on_synthetic(arg, __file__)
  smoke = preset == "smoke"
  return dict(
      world,
      base={"stages": ("engine", "sft", "grpo"), "eval.rows": ROWS},
      points=[{"grpo.advantage": a}
              for a in (("grpo", "rloo") if smoke else ("grpo", "dr_grpo", "rloo"))],
      rows=tuple(ROWS),
      metrics=("vcmr_r1_iou0.5", "vr_r1", "ver_acc", "miou_r1"))
