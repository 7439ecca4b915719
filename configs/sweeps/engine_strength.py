"""Ablation: how well the frozen engine reads fine-grained queries (engine.train.fine_keep).

  python -m vsr_jax.sweep --sweep=configs/sweeps/engine_strength.py[:smoke] --workdir=DIR

fine_keep in {0, 0.25, 0.5, 1}: the fraction of fine-grained tokens kept in the captions the
engine's text tower is retrained on (configs/synthetic.py: the video tower first learns every
fine detail; the last text_only_steps retrain the text tower alone): 0 is the default world,
with the widest gap for refinement to close, 1 an engine that reads fine-grained queries
(`:fine_engine`). Every point trains its own engine (and agents on it); only the data is
shared. Default: configs/synthetic.py's full budgets, 3 seeds, without the HQR stage.
`:reduced`: the same on
configs/synthetic.py:reduced (half budgets, half test split, for a 2-core machine).
`:smoke`: configs/synthetic.py:smoke (one joint engine phase, where fine_keep is the captions'
share for both towers), fine_keep in {0, 1}, one seed, stages engine + sft.
"""

from vsr_jax import config_lib, defaults



ROWS = defaults.default_rows("engine_single_shot", "agent_sqr_stage1", "agent_sqr_stage2")
SMOKE_ROWS = {k: ROWS[k] for k in ("engine_single_shot", "agent_sqr_stage1")}


def get_sweep(arg=None):
  preset = config_lib.check_preset(arg, ("default", "reduced", "smoke"), __file__)
  smoke = preset == "smoke"
  if smoke:
    return dict(
        config="configs/synthetic.py:smoke",
        base={"stages": ("engine", "sft"), "eval.rows": SMOKE_ROWS},
        points=[{"engine.train.fine_keep": k} for k in (0.0, 1.0)],
        seeds=(0,),
        rows=tuple(SMOKE_ROWS))
  return dict(
      config="configs/synthetic.py" + ("" if preset == "default" else ":" + preset),
      base={"stages": ("engine", "sft", "grpo"), "eval.rows": ROWS},
      points=[{"engine.train.fine_keep": k} for k in (0.0, 0.25, 0.5, 1.0)],
      seeds=(0, 1, 2),
      rows=tuple(ROWS),
      metrics=("vr_r1", "vcmr_r1_iou0.5", "orig_vr_r1"))
