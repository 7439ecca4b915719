"""The real-language stand-in of Charades-FIG (experiments/real_language_standin.py builds it):
real FIG queries and captions, frame features from the pretrained sentence encoder, the frozen
MiniLM engine.

  .venv/bin/python experiments/real_language_standin.py --out=DIR
  .venv/bin/python -m vsr_jax.main --config=configs/real_language_standin.py[:smoke] \
      --config.data.dir=DIR --workdir=RUN

Default: Charades-FIG's `minilm` preset (vsr_jax/real_config.py) with the budgets of the
stand-in run measured in issue 14 (engine 300 / SFT 300 / GRPO 40 steps), on the stand-in's
train split, evaluated on its test split. `:smoke`: `minilm_smoke`'s few steps (tests).
"""

from vsr_jax import config_lib, real_config


def get_config(arg=None):
  preset = config_lib.check_preset(arg, ("default", "smoke"), __file__)
  c = real_config.real_config("minilm_smoke" if preset == "smoke" else "minilm", __file__,
                              tfds_name="verified_fig/charades", eval_split="test",
                              max_frames=64)
  c.data.source = "files"        # the builder's output: annotations/, features/, meta.json
  c.data.feature_dim = 384       # the sentence encoder's width
  c.data.fps = 1.0
  c.grpo.rewards.answer = 1.6    # Charades' reward weights (METHOD.md §3)
  c.grpo.rewards.grounding_iou = 0.35
  if preset == "default":
    c.engine.train.steps = 300
    c.sft.steps = 300
    c.grpo.steps = 40
  return c
