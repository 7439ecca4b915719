"""ActivityNet-FIG (VERIFIED): test = ActivityNet Captions val_2.

  python -m vsr_jax.main --config=configs/activitynet_fig.py[:preset] \
      --config.data.manual_dir=DIR --workdir=runs/activitynet_fig

Presets as configs/_real.py; files as vsr_jax/data/tfds/verified.py's instructions.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_real", os.path.join(os.path.dirname(__file__), "_real.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


def get_config(arg=None):
  # ActivityNet videos run to minutes: longer ones are mean-pooled to 128 model frames.
  return _real.real_config(arg, __file__, tfds_name="verified_fig/activitynet",
                           eval_split="test", max_frames=128)
