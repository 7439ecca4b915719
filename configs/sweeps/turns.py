"""Ablation: the number of turns T at evaluation (eval.turns).

  python -m vsr_jax.sweep --sweep=configs/sweeps/turns.py[:smoke] --workdir=DIR

T in {1, 2, 3, 4, 5}: the SQR rows run up to eval.turns turns (their `turns` is 0; T = 1 is
the first retrieval, unrefined; an episode stops at its first `matched`), agent_no_refine stays
at one turn. The plot shows accuracy against the turn budget T with the mean number of turns
the episodes used (`turns_used`, dashed, right-hand axis). eval.turns is read by evaluation
only, so every point of a seed shares every training stage (grpo.turns, the episode length in
training, stays 2): a later point only evaluates. Default: configs/synthetic.py's full
budgets, 3 seeds, without the HQR stage. `:reduced`: the same on
configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke, T in {1, 2},
one seed, stages engine + sft.
"""

from vsr_jax import config_lib, defaults



ROWS = defaults.default_rows(
    "engine_single_shot", "agent_no_refine", "agent_sqr_stage1", "agent_sqr_stage2")
SMOKE_ROWS = {k: ROWS[k] for k in ("engine_single_shot", "agent_sqr_stage1")}


def get_sweep(arg=None):
  preset = config_lib.check_preset(arg, ("default", "reduced", "smoke"), __file__)
  smoke = preset == "smoke"
  if smoke:
    return dict(
        config="configs/synthetic.py:smoke",
        base={"stages": ("engine", "sft"), "eval.rows": SMOKE_ROWS},
        points=[{"eval.turns": t} for t in (1, 2)],
        seeds=(0,),
        rows=tuple(SMOKE_ROWS),
        metrics=("vr_r1", "turns_used"),
        plot_right="turns_used")
  return dict(
      config="configs/synthetic.py" + ("" if preset == "default" else ":" + preset),
      base={"stages": ("engine", "sft", "grpo"), "eval.rows": ROWS},
      points=[{"eval.turns": t} for t in (1, 2, 3, 4, 5)],
      seeds=(0, 1, 2),
      rows=tuple(ROWS),
      metrics=("vr_r1", "vcmr_r1_iou0.5", "ver_acc", "turns_used", "refinements"),
      plot_right="turns_used")
