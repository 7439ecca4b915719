"""Ablation: the engine's window as a prior of the agent's span head (agent.span_prior).

  python -m vsr_jax.sweep --sweep=configs/sweeps/span_prior.py[:smoke] --workdir=DIR

span_prior = 0: the start/end heads ground alone (the agent before issue 14); 1 (the default):
the span logits add the engine's window gain times a learned scale that starts at 1 (README,
"Grounding from the engine's window"). The points share the engine of each seed; sft and grpo
are trained per point. Rows: the engine's single shot, the unrefined agent (verify + ground
the top-1) and both SQR stages. Default: configs/synthetic.py's full budgets, 3 seeds, without
the HQR stage. `:reduced`: the same on configs/synthetic.py:reduced (half budgets, half test
split). `:smoke`: configs/synthetic.py:smoke, stages engine + sft, one seed.
"""

from vsr_jax import defaults, sweep

ROWS = defaults.default_rows("engine_single_shot", "agent_no_refine", "agent_sqr_stage1",
                             "agent_sqr_stage2")
SMOKE_ROWS = defaults.default_rows("engine_single_shot", "agent_no_refine")


def get_sweep(arg=None):
  preset, world = sweep.on_synthetic(arg, __file__)
  smoke = preset == "smoke"
  rows = SMOKE_ROWS if smoke else ROWS
  return dict(
      world,
      base={"stages": ("engine", "sft") if smoke else ("engine", "sft", "grpo"),
            "eval.rows": rows},
      points=[(f"span_prior={p:g}", {"agent.span_prior": p}) for p in (0.0, 1.0)],
      rows=tuple(rows),
      metrics=("vcmr_r1_iou0.5", "vr_r1", "ver_acc", "miou_r1"))
