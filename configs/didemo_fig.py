"""DiDeMo-FIG (VERIFIED): 4,013 test queries over 1,002 videos.

  python -m vsr_jax.main --config=configs/didemo_fig.py[:preset] \
      --config.data.manual_dir=DIR --workdir=runs/didemo_fig

Presets as vsr_jax/real_config.py; files as vsr_jax/data/tfds/verified.py's instructions.
"""
from vsr_jax import real_config


def get_config(arg=None):
  # DiDeMo videos are ~30 s; the reward weights are the defaults (METHOD.md §3).
  return real_config.real_config(arg, __file__, tfds_name="verified_fig/didemo", eval_split="test",
                           max_frames=64)
