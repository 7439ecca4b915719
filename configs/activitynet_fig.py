"""ActivityNet-FIG (VERIFIED): test = ActivityNet Captions val_2.

  python -m vsr_jax.main --config=configs/activitynet_fig.py[:preset] \
      --config.data.manual_dir=DIR --workdir=runs/activitynet_fig

Presets as vsr_jax/real_config.py; files as vsr_jax/data/tfds/verified.py's instructions.
"""
from vsr_jax import real_config


def get_config(arg=None):
  # ActivityNet videos run to minutes: longer ones are mean-pooled to 128 model frames.
  return real_config.real_config(arg, __file__, tfds_name="verified_fig/activitynet",
                           eval_split="test", max_frames=128)
