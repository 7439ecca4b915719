"""Tests for vsr_jax.defaults.validate: bad values are reported naming the field."""
import os

import pytest

from vsr_jax import config_lib, defaults, hosts
from vsr_jax.config_lib import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "synthetic.py")
PRESETS = ("default", "smoke", "fine_engine", "joint_engine")


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_validate(preset):
  defaults.validate(config_lib.load(f"{SYNTHETIC}:{preset}"))


def test_base_config_validates():
  defaults.validate(defaults.base_config())


@pytest.mark.parametrize("overrides, field", [
    ({"data.synthetic.family_min": "1"}, "data.synthetic.family_min"),
    ({"data.synthetic.family_min": "5"}, "data.synthetic.family_min"),    # > family_max (4)
    ({"engine.train.fine_keep": "1.5"}, "engine.train.fine_keep"),
    ({"engine.train.fine_keep": "-0.1"}, "engine.train.fine_keep"),
    ({"engine.train.caption_variants": "-1"}, "engine.train.caption_variants"),
    ({"sft.ret_rows": "9"}, "sft.ret_rows"),
    ({"index.backend": "faiss"}, "index.backend"),
    ({"engine.text.width": "30"}, "engine.text.width"),                  # heads = 4
    ({"data.source": "files"}, "data.dir"),                              # files need a dir
    ({"data.source": "hdf5"}, "data.source"),
    ({"data.synthetic.max_events": "20"}, "data.max_frames"),            # 20 * 4 - 1 > 32
    ({"data.synthetic.min_events": "4"}, "data.synthetic.min_events"),   # > max_events (3)
    ({"data.synthetic.max_queries": "3"}, "data.synthetic.max_queries"), # > min_events (2)
    ({"data.synthetic.train_videos": "3"}, "data.synthetic.train_videos"),
    ({"data.synthetic.min_frames": "33"}, "data.synthetic.min_frames"),
    ({"engine.train.temperature": "0"}, "engine.train.temperature"),
    ({"engine.train.hard_negatives": "5"}, "engine.train.hard_negatives"),  # > mine_top_k (4)
    ({"eval.grounding": "oracle"}, "eval.grounding"),
    ({"eval.frame_store": "disk"}, "eval.frame_store"),
    ({"data.source": "tfds", "data.features_on_disk": "True"}, "data.features_on_disk"),
    ({"index.scann.beyond": "nearest"}, "index.scann.beyond"),
    ({"eval.max_queries": "-1"}, "eval.max_queries"),
    ({"sft.steps": "0"}, "sft.steps"),
    ({"grpo.steps": "0"}, "grpo.steps"),
    ({"eval.batch_size": "0"}, "eval.batch_size"),
    ({"grpo.batch_size": "0"}, "grpo.batch_size"),
    ({"sft.learning_rate": "0.0"}, "sft.learning_rate"),
    ({"grpo.learning_rate": "-1e-5"}, "grpo.learning_rate"),
    ({"sft.projector_learning_rate": "0.0"}, "sft.projector_learning_rate"),
    ({"engine.train.warmup_steps": "-1"}, "engine.train.warmup_steps"),
    ({"checkpoint.every_steps": "0"}, "checkpoint.every_steps"),
    ({"checkpoint.max_to_keep": "0"}, "checkpoint.max_to_keep"),
    ({"log.every_steps": "0"}, "log.every_steps"),
    ({"grpo.clip_grad_norm": "0.0"}, "grpo.clip_grad_norm"),
    ({"agent.depth": "0"}, "agent.depth"),
    ({"engine.embed_dim": "0"}, "engine.embed_dim"),
    ({"mesh.data": "0"}, "mesh.data"),
    ({"mesh.init_timeout_s": "0"}, "mesh.init_timeout_s"),
    ({"mesh.heartbeat_timeout_s": "0"}, "mesh.heartbeat_timeout_s"),
    ({"data.fps": "0"}, "data.fps"),
    ({"agent.num_latents": "65"}, "agent.num_latents"),
    ({"agent.num_latents": "-1"}, "agent.num_latents"),
    ({"eval.turns": "0"}, "eval.turns"),
    ({"agent.refine": "soft"}, "agent.refine"),
    ({"stages": "('engine', 'grpo', 'sft')"}, "stages"),                # grpo needs sft first
    ({"eval.rows.agent_hqr.stage": "sft_hq"}, "eval.rows.agent_hqr.stage"),
    ({"eval.rows.agent_hqr.kind": "judge"}, "eval.rows.agent_hqr.kind"),
    ({"eval.submission_row": "nope"}, "eval.submission_row"),
    ({"eval.submission_row": "agent_hqr", "stages": "('engine', 'sft')"},
     "eval.submission_row"),                                            # its stage is not run
    ({"eval.rows.agent_hqr.kind": "engine"}, "eval.rows.agent_hqr.stage"),   # no engine there
    ({"eval.rows.engine_single_shot.kind": "agent"}, "eval.rows.engine_single_shot.stage"),
    ({"eval.rows.agent_sqr_stage1.refine": "hqr"}, "eval.rows.agent_sqr_stage1.refine"),
    ({"eval.checkpoint": "sft"}, "eval.checkpoint"),
    ({"grpo.updates_per_batch": "0"}, "grpo.updates_per_batch"),
    ({"grpo.turns": "0"}, "grpo.turns"),
    ({"grpo.group_size": "1"}, "grpo.group_size"),
    ({"agent.sigma": "0"}, "agent.sigma"),
    ({"agent.sigma": "-0.05"}, "agent.sigma"),
    ({"sft.hard_pool_depth": "100000"}, "sft.hard_pool_depth"),   # > the train corpus
    ({"grpo.advantage": "ppo"}, "grpo.advantage"),
    ({"grpo.not_matched_iou": "2"}, "grpo.not_matched_iou"),
    ({"grpo.vcmr_iou": "0"}, "grpo.vcmr_iou"),
    ({"agent.engine_words": "True", "agent.backbone": "qwen3"}, "agent.engine_words"),
    ({"engine.train.text_only_steps": "30"}, "engine.train.text_only_steps"),
    ({"agent.latent_eps": "0"}, "agent.latent_eps"),
    ({"agent.sqr_head": "tree"}, "agent.sqr_head"),
    ({"agent.refine_hidden": "-1"}, "agent.refine_hidden"),
    ({"log.profile_steps": "5"}, "log.profile_steps"),
    ({"log.profile_steps": "3:3"}, "log.profile_steps"),                # an empty range
    ({"log.profile_steps": "-1:3"}, "log.profile_steps"),
])
def test_bad_values_name_the_field(overrides, field):
  config = config_lib.load(SYNTHETIC + ":smoke", overrides)
  with pytest.raises(ConfigError) as e:
    defaults.validate(config)
  assert str(e.value).startswith(f"config.{field}="), str(e.value)


def test_message_shows_the_value():
  config = config_lib.load(SYNTHETIC + ":smoke", {"index.backend": "faiss"})
  with pytest.raises(ConfigError, match=r"config\.index\.backend='faiss': no index backend of "
                     r"that name; known: exact, scann"):
    defaults.validate(config)


def test_files_source_with_dir_validates():
  defaults.validate(config_lib.load(SYNTHETIC + ":smoke", {
      "data.source": "files", "data.dir": "/x", "engine.train.source": "train"}))


def test_files_source_cannot_stream():
  with pytest.raises(ConfigError, match="engine.train.source"):
    defaults.validate(config_lib.load(SYNTHETIC + ":smoke", {
        "data.source": "files", "data.dir": "/x"}))


def test_zero_steps_say_to_leave_the_stage_out():
  with pytest.raises(ConfigError, match=r"config.sft.steps=0: expected >= 1 \(a stage that is "
                     r"not wanted is left out of config.stages"):
    defaults.validate(config_lib.load(SYNTHETIC + ":smoke", {"sft.steps": "0"}))


def test_numeric_rules_reach_a_field_added_later():
  config = config_lib.load(SYNTHETIC + ":smoke")
  with config.unlocked():
    config.sft.extra = {"batch_size": 0}
  with pytest.raises(ConfigError, match=r"config.sft.extra.batch_size=0: expected >= 1"):
    defaults.validate(config)


def test_a_host_frame_store_is_for_one_process(monkeypatch):
  config = config_lib.load(SYNTHETIC + ":smoke", {"eval.frame_store": "host"})
  defaults.validate(config)
  monkeypatch.setattr(hosts, "joined", lambda: 2)
  with pytest.raises(ConfigError, match="eval.frame_store='host'.*multi-process"):
    defaults.validate(config)


def test_mesh_all_devices_validates():
  defaults.validate(config_lib.load(SYNTHETIC + ":smoke", {"mesh.data": "-1"}))


def test_zero_heads_is_a_config_error():
  config = config_lib.load(SYNTHETIC + ":smoke", {"engine.text.heads": "0"})
  with pytest.raises(ConfigError, match="engine.text.heads"):
    defaults.validate(config)


def test_zero_chunk_videos_is_a_config_error():
  config = config_lib.load(SYNTHETIC + ":smoke", {"data.synthetic.chunk_videos": "0"})
  with pytest.raises(ConfigError, match="data.synthetic.chunk_videos"):
    defaults.validate(config)


@pytest.mark.parametrize("field, value", [("data.synthetic.coarse_values", "(1, 16, 16)"),
                                          ("data.synthetic.fine_values", "(8, 8)")])
def test_value_counts_are_validated(field, value):
  config = config_lib.load(SYNTHETIC + ":smoke", {field: value})
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    defaults.validate(config)
