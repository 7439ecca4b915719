"""Ablation: soft (SQR) vs discrete (HQR) query refinement at an equal number N of tokens.

  python -m vsr_jax.sweep --sweep=configs/sweeps/sqr_vs_hqr.py[:smoke] --workdir=DIR

Each run trains both stage-1 agents (sft: N soft tokens; sft_hqr: the same agent writing N
refinement words), so the rows agent_sqr_stage1 and agent_hqr of one run compare them at the
same N, engine and data. N (agent.num_latents) in {2, 4, 8}; the points share the engine of
each seed. Default: configs/synthetic.py's full budgets, 3 seeds, stage 2 (GRPO) left out
(both rows are stage 1). `:reduced`: the same on
configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke, N in {2, 4}, one seed.
"""

from vsr_jax import defaults, sweep



ROWS = defaults.default_rows("engine_single_shot", "agent_hqr", "agent_sqr_stage1")
SMOKE_ROWS = {k: ROWS[k] for k in ("agent_hqr", "agent_sqr_stage1")}


def get_sweep(arg=None):
  preset, world = sweep.on_synthetic(arg, __file__)
  smoke = preset == "smoke"
  rows = SMOKE_ROWS if smoke else ROWS
  return dict(
      world,
      base={"stages": ("engine", "sft", "sft_hqr"), "eval.rows": rows},
      points=[{"agent.num_latents": n} for n in ((2, 4) if smoke else (2, 4, 8))],
      rows=tuple(rows),
      metrics=("vr_r1", "vcmr_r1_iou0.5"))
