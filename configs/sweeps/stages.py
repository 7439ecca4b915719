"""Ablation: stage 1 (SFT) vs stage 1 + 2 (SFT then GRPO), over seeds and the GRPO budget.

  python -m vsr_jax.sweep --sweep=configs/sweeps/stages.py[:smoke] --workdir=DIR

Each run has both rows, agent_sqr_stage1 (the stage-1 agent) and agent_sqr_stage2 (after
GRPO); the points vary grpo.steps in {50, 100, 200} (100 is the default schedule), sharing the
engine and the stage-1 agent of each seed: only GRPO is trained per point, and the stage-1 row
is the same checkpoint in every point. Default: configs/synthetic.py's full budgets, 3 seeds,
without the HQR stage. `:reduced`: the same on configs/synthetic.py:reduced (half budgets, half
test split), grpo.steps in {25, 50, 100} (50 is its schedule). `:smoke`:
configs/synthetic.py:smoke, grpo.steps in {2, 4}, one seed.
"""

from vsr_jax import defaults, sweep



ROWS = defaults.default_rows("engine_single_shot", "agent_sqr_stage1", "agent_sqr_stage2")
SMOKE_ROWS = {k: ROWS[k] for k in ("agent_sqr_stage1", "agent_sqr_stage2")}


def get_sweep(arg=None):
  preset, world = sweep.on_synthetic(arg, __file__)
  smoke = preset == "smoke"
  rows = SMOKE_ROWS if smoke else ROWS
  return dict(
      world,
      base={"stages": ("engine", "sft", "grpo"), "eval.rows": rows},
      points=[(f"grpo_steps={n}", {"grpo.steps": n})
              for n in {"smoke": (2, 4), "reduced": (25, 50, 100)}.get(preset, (50, 100, 200))],
      rows=tuple(rows),
      metrics=("vcmr_r1_iou0.5", "vr_r1", "ver_acc", "miou_r1"))
