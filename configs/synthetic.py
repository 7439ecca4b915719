"""The embedded synthetic VCMR benchmark (no download).

  --config=configs/synthetic.py           the default, the README's main command: the engine's
                                          gap on the query side - its video tower learns every
                                          fine detail, its text tower is then retrained on
                                          coarse captions alone (the index holds fine detail
                                          that the queries cannot reach); 12,000 train videos;
                                          SFT 900 steps, the verifier reading the original
                                          query's view, its thresholds calibrated on val
                                          (1,000 videos)
  --config=configs/synthetic.py:smoke     seconds, for tests
  --config=configs/synthetic.py:reduced   the default world at half the training budgets
                                          (engine 400 steps of which 150 text-only, sft 225,
                                          grpo 50) and half the test split (1,000 videos): the
                                          ablation sweeps measured on this 2-core machine
                                          (they were, before the default's verifier settings,
                                          which it shares, came in)
  --config=configs/synthetic.py:fine_engine   the knob's other end: the text tower's retraining
                                              keeps every fine-grained token (an engine that
                                              reads fine-grained queries)
  --config=configs/synthetic.py:joint_engine  the earlier default world: both towers trained
                                              together on captions that keep 20 % of the fine
                                              tokens, 4,000 train videos (the gap sits in the
                                              video vectors too; README, "Other worlds")
"""

from vsr_jax import config_lib, defaults

PRESETS = ("default", "smoke", "reduced", "fine_engine", "joint_engine")


def get_config(arg=None):
  preset = config_lib.check_preset(arg, PRESETS, __file__)
  config = defaults.base_config()
  if preset != "joint_engine":
    config.engine.train.text_only_steps = 300
    config.engine.train.fine_keep = 0.0
    config.data.synthetic.train_videos = 12000
  # The verifier (issue 14): SFT long enough for it (turn-1 ROC AUC 0.914 -> 0.934 at 900
  # steps, seed 0), the engine's view under the original query in every turn (what SFT shows
  # it; the refined query's view makes any wrong final top-1 look like a match), and its
  # thresholds, one for going on and one for the last turn, calibrated on the val split.
  # (joint_engine stays base_config's world as it was measured.)
  # The val split holds 1,000 videos (about 1,500 queries, 230 right top-1s): at 200 (about 45
  # right top-1s) the chosen thresholds and span sharpness changed with the seed (seed 0:
  # stage 2 VER 76.6 -> 78.5 on test, the same checkpoints).
  if preset != "joint_engine":
    config.sft.steps = 900
    config.rollout.view_query = "original"
    config.eval.calibrate = "val"
    config.data.synthetic.val_videos = 1000
  if preset == "fine_engine":
    config.engine.train.fine_keep = 1.0
  if preset == "reduced":
    config.engine.train.steps = 400
    config.engine.train.text_only_steps = 150
    config.sft.steps = 225
    config.grpo.steps = 50
    config.data.synthetic.test_videos = 1000
  if preset == "smoke":
    s = config.data.synthetic
    s.train_videos, s.val_videos, s.test_videos = 96, 0, 64
    config.eval.calibrate = ""     # no val split (tests calibrate on train)
    s.family_min, s.family_max = 3, 4
    s.chunk_videos = 32
    config.data.max_frames = 32
    s.min_frames = 12
    s.max_events = 3
    config.data.feature_dim = 32
    s.render_dim = 32
    s.attr_dim = 16
    config.engine.embed_dim = 32
    config.engine.text.width = 32
    config.engine.text.mlp_dim = 64
    config.engine.text.depth = 1
    config.engine.text.num_slots = 4
    config.engine.video.hidden = 32
    config.engine.video.depth = 1
    config.engine.train.steps = 30
    config.engine.train.text_only_steps = 0   # one phase (tests/test_train.py checks two)
    config.engine.train.batch_size = 16
    config.engine.train.warmup_steps = 5
    config.engine.train.mine_every = 15
    config.engine.train.mine_top_k = 4
    config.engine.train.pool_videos = 64
    config.eval.batch_size = 32
    config.agent.width = 32
    config.agent.depth = 1
    config.agent.mlp_dim = 64
    config.agent.num_latents = 2
    config.agent.refine_hidden = 64
    config.sft.steps = 20
    config.sft.batch_size = 16
    config.sft.warmup_steps = 2
    config.sft.hard_negatives = 4
    config.sft.hard_pool_depth = 16
    config.grpo.steps = 4
    config.grpo.batch_size = 8
    config.grpo.group_size = 2
    config.grpo.warmup_steps = 1
    config.eval.tvr_top_k = 10
    config.index.scann.training_sample_size = 64
    config.log.every_steps = 10
    config.checkpoint.every_steps = 15
  return config
