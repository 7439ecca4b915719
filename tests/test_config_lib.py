"""Tests for vsr_jax.config_lib: loading `file.py[:preset]`, overrides, (de)serialisation, diff."""
import os
import textwrap

import ml_collections
import pytest

from vsr_jax import config_lib, defaults
from vsr_jax.config_lib import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "synthetic.py")


@pytest.fixture
def toy_config(tmp_path):
  """A config file with one field of every type (the base schema has no tuple field)."""
  path = tmp_path / "toy.py"
  path.write_text(textwrap.dedent("""
      import ml_collections

      def get_config(arg=None):
          c = ml_collections.ConfigDict()
          c.name = "plain"
          c.count = 3
          c.rate = 0.5
          c.flag = False
          c.sizes = (1, 2)
          c.sub = ml_collections.ConfigDict()
          c.sub.depth = 2
          c.sub.words = ("a", "b")
          return c
  """))
  return str(path)


# ----------------------------------------------------------------------------- presets


def test_load_default_and_presets():
  default = config_lib.load(SYNTHETIC)
  smoke = config_lib.load(SYNTHETIC + ":smoke")
  fine = config_lib.load(SYNTHETIC + ":fine_engine")
  joint = config_lib.load(SYNTHETIC + ":joint_engine")
  # The default world: the text tower retrained without fine tokens, 12,000 train videos.
  assert (default.engine.train.text_only_steps, default.engine.train.fine_keep) == (300, 0.0)
  assert default.data.synthetic.train_videos == 12000
  # Its verifier: longer SFT, the original query's view, thresholds calibrated on a val split
  # of 1,000 videos.
  assert (default.sft.steps, default.rollout.view_query, default.eval.calibrate) == (
      900, "original", "val")
  assert default.data.synthetic.val_videos == 1000
  assert smoke.eval.calibrate == ""                        # the smoke world has no val split
  with pytest.raises(config_lib.ConfigError, match=r"eval.calibrate_keep_ver='yes': expected "
                     r"a bool"):
    config_lib.load(SYNTHETIC, {"eval.calibrate_keep_ver": "'yes'"})
  assert smoke.data.synthetic.train_videos == 96           # set by the smoke preset
  assert smoke.engine.text.num_slots == 4
  assert fine.engine.train.fine_keep == 1.0
  assert fine.engine.train.text_only_steps == 300
  # joint_engine is base_config's world (the earlier default).
  base = defaults.base_config()
  assert joint.data.synthetic.train_videos == base.data.synthetic.train_videos == 4000
  assert (joint.engine.train.text_only_steps, joint.engine.train.fine_keep) == (0, 0.2)
  assert config_lib.diff(config_lib.to_dict(joint), config_lib.to_dict(base)) == []
  assert joint.agent.num_latents == default.agent.num_latents   # the agent is the default's
  # An explicit 'default' is the same as no preset.
  assert config_lib.to_dict(config_lib.load(SYNTHETIC + ":default")) == config_lib.to_dict(default)


def test_loaded_config_is_locked():
  config = config_lib.load(SYNTHETIC + ":smoke")
  with pytest.raises(AttributeError):
    config.new_field = 1
  with pytest.raises(AttributeError):
    config.data.new_field = 1


def test_unknown_preset_names_known_ones():
  with pytest.raises(ConfigError) as e:
    config_lib.load(SYNTHETIC + ":smok")
  msg = str(e.value)
  assert "'smok'" in msg
  for name in ("default", "smoke", "fine_engine", "joint_engine"):
    assert name in msg
  assert "did you mean 'smoke'" in msg


def test_check_preset():
  assert config_lib.check_preset(None, ("default", "x"), "f.py") == "default"
  assert config_lib.check_preset("x", ("default", "x"), "f.py") == "x"
  with pytest.raises(ConfigError, match="known presets: default, x"):
    config_lib.check_preset("zzzzzz", ("default", "x"), "f.py")


def test_missing_file_and_missing_get_config(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load(str(tmp_path / "nope.py"))
  path = tmp_path / "empty.py"
  path.write_text("X = 1\n")
  with pytest.raises(ConfigError, match="get_config"):
    config_lib.load(str(path))
  path = tmp_path / "notcd.py"
  path.write_text("def get_config(arg=None):\n    return {'a': 1}\n")
  with pytest.raises(ConfigError, match="ConfigDict"):
    config_lib.load(str(path))


# ----------------------------------------------------------------------------- overrides


def test_override_int_float_bool_str():
  config = config_lib.load(SYNTHETIC + ":smoke", {
      "seed": "7",
      "engine.train.learning_rate": "3",          # int text into a float field -> float
      "engine.train.fine_keep": "0.25",
      "grpo.balanced": "true",
      "data.source": "files",
      "data.dir": "/some/where",
      "data.synthetic.noise": "1e-1",
  })
  assert config.seed == 7 and type(config.seed) is int
  assert config.engine.train.learning_rate == 3.0
  assert type(config.engine.train.learning_rate) is float
  assert config.engine.train.fine_keep == 0.25
  assert config.grpo.balanced is True
  assert config.data.source == "files"
  assert config.data.dir == "/some/where"
  assert config.data.synthetic.noise == pytest.approx(0.1)
  # Other fields keep the preset's values.
  assert config.data.synthetic.train_videos == 96


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("True", True), ("1", True), ("yes", True),
    ("false", False), ("FALSE", False), ("0", False), ("no", False),
])
def test_override_bool_spellings(text, expected):
  config = config_lib.load(SYNTHETIC + ":smoke", {"grpo.balanced": text})
  assert config.grpo.balanced is expected


def test_override_tuple_and_str_with_literal_text(toy_config):
  config = config_lib.load(toy_config, {"sizes": "[3, 4, 5]", "sub.words": "('x',)",
                                        "name": "[1, 2]", "count": "-4", "rate": "2",
                                        "flag": "yes"})
  assert config.sizes == (3, 4, 5) and isinstance(config.sizes, tuple)
  assert config.sub.words == ("x",)
  assert config.name == "[1, 2]"              # a str field takes the text as it is
  assert config.count == -4
  assert config.rate == 2.0 and isinstance(config.rate, float)
  assert config.flag is True


def test_misspelt_field_suggests():
  with pytest.raises(ConfigError) as e:
    config_lib.load(SYNTHETIC + ":smoke", {"engine.train.fine_kep": "0.5"})
  msg = str(e.value)
  assert "'fine_kep'" in msg and "engine.train" in msg
  assert "did you mean --config.engine.train.fine_keep?" in msg
  # A misspelt section is reported at its own depth.
  with pytest.raises(ConfigError) as e:
    config_lib.load(SYNTHETIC + ":smoke", {"engin.train.fine_keep": "0.5"})
  assert "no field 'engin' in the top level" in str(e.value)
  assert "did you mean --config.engine.train.fine_keep?" in str(e.value)


def test_unknown_field_without_close_match_has_no_suggestion():
  with pytest.raises(ConfigError) as e:
    config_lib.load(SYNTHETIC + ":smoke", {"qqqqqqqqqqqq": "1"})
  assert "did you mean" not in str(e.value)


def test_field_below_a_leaf_is_an_error():
  with pytest.raises(ConfigError, match="no field 'x' in seed"):
    config_lib.load(SYNTHETIC + ":smoke", {"seed.x": "1"})


def test_setting_a_section_is_an_error():
  with pytest.raises(ConfigError, match="is a section"):
    config_lib.load(SYNTHETIC + ":smoke", {"engine.train": "3"})
  # A dict literal replaces a section whole (eval.rows); anything else names it.
  with pytest.raises(ConfigError, match="is a section"):
    config_lib.load(SYNTHETIC + ":smoke", {"data": "[1]"})
  config = config_lib.load(SYNTHETIC + ":smoke", {
      "eval.rows": "{'mine': {'kind': 'agent', 'stage': 'sft', 'turns': 3, 'refine': ''}}"})
  assert list(config.eval.rows) == ["mine"] and config.eval.rows.mine.turns == 3


@pytest.mark.parametrize("field, text, needle", [
    ("engine.train.steps", "1.5", "expected a int, got float"),
    ("engine.train.steps", "abc", "not a Python literal"),
    ("engine.train.steps", "'7'", "expected a int, got str"),
    ("engine.train.fine_keep", "None", "expected a float, got NoneType"),
    ("engine.train.fine_keep", "[1]", "expected a float, got list"),
    ("grpo.balanced", "maybe", "expected a bool"),
    ("grpo.balanced", "2", "expected a bool"),
])
def test_wrong_type_is_an_error(field, text, needle):
  with pytest.raises(ConfigError) as e:
    config_lib.load(SYNTHETIC + ":smoke", {field: text})
  assert needle in str(e.value)
  assert f"--config.{field}={text}" in str(e.value)


def test_wrong_type_tuple_field(toy_config):
  with pytest.raises(ConfigError, match="expected a tuple, got int"):
    config_lib.load(toy_config, {"sizes": "3"})


def test_bool_for_int_field_is_an_error():
  with pytest.raises(ConfigError):
    config_lib.load(SYNTHETIC + ":smoke", {"seed": "True"})


# ----------------------------------------------------------------------------- to_dict / from_dict / diff


def test_to_dict_from_dict_round_trip(toy_config):
  config = config_lib.load(toy_config, {"count": "9"})
  d = config_lib.to_dict(config)
  assert d == {"name": "plain", "count": 9, "rate": 0.5, "flag": False, "sizes": [1, 2],
               "sub": {"depth": 2, "words": ["a", "b"]}}
  back = config_lib.from_dict(d)
  assert isinstance(back, ml_collections.ConfigDict)
  assert isinstance(back.sub, ml_collections.ConfigDict)
  assert back.sizes == (1, 2) and isinstance(back.sizes, tuple)
  assert back.sub.words == ("a", "b")
  assert back.count == 9 and back.rate == 0.5 and back.flag is False
  assert config_lib.to_dict(back) == d
  with pytest.raises(AttributeError):   # locked like a loaded config
    back.other = 1


def test_round_trip_of_the_full_schema():
  config = config_lib.load(SYNTHETIC + ":smoke", {"engine.train.fine_keep": "0.75"})
  d = config_lib.to_dict(config)
  back = config_lib.from_dict(d)
  assert config_lib.to_dict(back) == d
  assert config_lib.diff(config_lib.to_dict(back), d) == []
  assert back.engine.train.fine_keep == 0.75
  assert type(back.engine.train.learning_rate) is float
  assert type(back.engine.train.steps) is int


def test_diff():
  a = {"x": 1, "s": {"p": 1, "q": 2, "deep": {"r": 1}}, "only_a": 0, "t": {"u": 1}}
  b = {"x": 1, "s": {"p": 5, "q": 2, "deep": {"r": 2}}, "only_b": 0, "t": 3}
  assert config_lib.diff(a, b) == ["only_a", "only_b", "s.deep.r", "s.p", "t"]
  assert config_lib.diff(a, a) == []
  assert config_lib.diff(b, a) == ["only_a", "only_b", "s.deep.r", "s.p", "t"]


def test_diff_of_loaded_configs():
  a = config_lib.to_dict(config_lib.load(SYNTHETIC + ":smoke"))
  b = config_lib.to_dict(config_lib.load(SYNTHETIC + ":smoke", {
      "seed": "3", "eval.batch_size": "8", "data.synthetic.noise": "0.1"}))
  assert config_lib.diff(a, b) == ["data.synthetic.noise", "eval.batch_size", "seed"]
