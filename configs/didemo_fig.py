"""DiDeMo-FIG (VERIFIED): 4,013 test queries over 1,002 videos.

  python -m vsr_jax.main --config=configs/didemo_fig.py[:preset] \
      --config.data.manual_dir=DIR --workdir=runs/didemo_fig

Presets as configs/_real.py; files as vsr_jax/data/tfds/verified.py's instructions.
"""
import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "configs_real", os.path.join(os.path.dirname(__file__), "_real.py"))
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)


def get_config(arg=None):
  # DiDeMo videos are ~30 s; the reward weights are the defaults (METHOD.md §3).
  return _real.real_config(arg, __file__, tfds_name="verified_fig/didemo", eval_split="test",
                           max_frames=64)
