"""The shared base of the real-benchmark configs (configs/charades_fig.py, didemo_fig.py,
activitynet_fig.py, tvr.py). Presets:

  default        the from-scratch text tower (engine.text.kind='scratch')
  minilm         the frozen pretrained encoder (all-MiniLM-L6-v2) as the engine's text tower
  smoke          a few steps of every stage, for pipeline checks (seconds to minutes)
  minilm_smoke   both
"""

from vsr_jax import config_lib, defaults

PRESETS = ("default", "minilm", "smoke", "minilm_smoke")


def real_config(arg, path: str, *, tfds_name: str, eval_split: str, max_frames: int):
  preset = config_lib.check_preset(arg, PRESETS, path)
  c = defaults.base_config()
  c.data.source = "tfds"
  c.data.tfds.name = tfds_name
  c.data.manual_dir = ""          # required: --config.data.manual_dir=DIR
  c.data.train_split = "train"    # absent from the dataset -> trains on eval_split, loudly
  c.data.eval_split = eval_split
  c.data.max_frames = max_frames
  c.data.max_query_len = 32       # ~99% of FIG queries' words (longer ones are cut, counted)
  c.engine.train.source = "train"   # 'stream' is the synthetic world's only
  if preset.startswith("minilm"):
    c.engine.text.kind = "minilm"
    c.engine.text.width = 384     # its hidden size: the soft tokens' width
    c.data.max_query_len = 40     # word pieces, ~99% of FIG queries
    # The frozen encoder's work, which dominates a step here (README: the real-size run):
    # stage 0's fine_keep captions are 8 draws per caption encoded once (4 cost 2.8 points of
    # the engine's R@1 there, 8 cost 0.7), and SFT's L_ret reads 12 of a batch's 32
    # not-matched rows (scaled to the same expected gradient).
    c.engine.train.caption_variants = 8
    c.sft.ret_rows = 12
  if preset.endswith("smoke"):
    c.engine.train.steps = 20
    c.engine.train.batch_size = 32
    c.engine.train.warmup_steps = 5
    c.engine.train.mine_every = 10
    c.sft.steps = 10
    c.sft.batch_size = 16
    if c.sft.ret_rows:
      c.sft.ret_rows = 3          # of the 8 not-matched rows
    c.sft.warmup_steps = 2
    c.sft.hard_negatives = 4
    c.sft.hard_pool_depth = 16
    c.grpo.steps = 2
    c.grpo.batch_size = 4
    c.grpo.group_size = 2
    c.grpo.warmup_steps = 1
    c.eval.batch_size = 64
    c.eval.tvr_top_k = 10
    c.log.every_steps = 5
    c.checkpoint.every_steps = 10
  return c
