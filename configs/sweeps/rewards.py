"""Ablation: the GRPO rewards (METHOD.md §4).

  python -m vsr_jax.sweep --sweep=configs/sweeps/rewards.py[:smoke] --workdir=DIR

Points: `all` (answer + grounding IoU + the paper's retrieval reward exp(-L_ret));
`no_retrieval` (grpo.rewards.retrieval_exp_neg_ret = 0); `no_answer` (grpo.rewards.answer = 0);
`delta_p` (the reference code's retrieval reward p_after - p_before in place of exp(-L_ret),
at the same weight 0.8); `vcmr` (the VCMR hit reward in place of the answer reward, at its
weight: a rejection earns nothing by itself). The rewards are read by stage 2 only: the points share the engine and
the stage-1 agent of each seed, and agent_sqr_stage1 is the same checkpoint in every point.
Default: configs/synthetic.py's full budgets, 3 seeds, without the HQR stage. `:reduced`: the
same on configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke, points all and no_retrieval, one seed.
"""

from vsr_jax import defaults, sweep



ROWS = defaults.default_rows("agent_sqr_stage1", "agent_sqr_stage2")
POINTS = [
    ("all", {}),
    ("no_retrieval", {"grpo.rewards.retrieval_exp_neg_ret": 0.0}),
    ("no_answer", {"grpo.rewards.answer": 0.0}),
    ("delta_p", {"grpo.rewards.retrieval_exp_neg_ret": 0.0,
                 "grpo.rewards.retrieval_delta_p": 0.8}),
    ("vcmr", {"grpo.rewards.answer": 0.0, "grpo.rewards.vcmr": 1.2}),
]


def get_sweep(arg=None):
  preset, world = sweep.on_synthetic(arg, __file__)
  smoke = preset == "smoke"
  return dict(
      world,
      base={"stages": ("engine", "sft", "grpo"), "eval.rows": ROWS},
      points=POINTS[:2] if smoke else POINTS,
      swept=(),     # one tick per point
      rows=tuple(ROWS),
      metrics=("vcmr_r1_iou0.5", "vr_r1", "ver_acc", "miou_r1"))
