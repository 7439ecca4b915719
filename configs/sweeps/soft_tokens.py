"""Ablation: the number of soft tokens N (agent.num_latents) of Soft Query Refinement.

  python -m vsr_jax.sweep --sweep=configs/sweeps/soft_tokens.py[:smoke] --workdir=DIR

N in {0, 1, 2, 4, 8, 16} (N <= engine.text.num_slots = 16: the engine's text tower has that
many slots for soft tokens; N = 0 refines nothing, so its SQR rows are the unrefined agent
over eval.turns turns). The points share the engine of each seed (N is not an engine field);
sft and grpo are trained per point. Default: configs/synthetic.py's full budgets, 3 seeds,
without the HQR stage (not part of this ablation). `:reduced`: the same on
configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke,
N in {0, 4}, one seed, stages engine + sft only and two rows (for tests).
"""

from vsr_jax import config_lib, defaults

ROWS = ("engine_single_shot", "agent_sqr_stage1", "agent_sqr_stage2")
SMOKE_ROWS = defaults.default_rows("engine_single_shot", "agent_sqr_stage1")


def get_sweep(arg=None):
  preset = config_lib.check_preset(arg, ("default", "reduced", "smoke"), __file__)
  smoke = preset == "smoke"
  if smoke:
    return dict(
        config="configs/synthetic.py:smoke",
        base={"stages": ("engine", "sft"), "eval.rows": SMOKE_ROWS},
        points=[{"agent.num_latents": n} for n in (0, 4)],
        seeds=(0,),
        rows=tuple(SMOKE_ROWS),
        metrics=("vr_r1", "vcmr_r1_iou0.5"))
  return dict(
      config="configs/synthetic.py" + ("" if preset == "default" else ":" + preset),
      base={"stages": ("engine", "sft", "grpo")},
      points=[{"agent.num_latents": n} for n in (0, 1, 2, 4, 8, 16)],
      seeds=(0, 1, 2),
      rows=ROWS,
      metrics=("vr_r1", "vcmr_r1_iou0.5", "ver_acc"))
