"""Tests for vsr_jax.calibration: the threshold's logit margin, the choice (ties nearest 0.5),
and the calibration splits it refuses."""
import math

import numpy as np
import pytest

from vsr_jax import calibration


def test_margin_is_the_log_odds():
  assert calibration.margin(0.5) == 0.0
  assert math.isclose(1 / (1 + math.exp(-calibration.margin(0.8))), 0.8)
  assert calibration.margin(0.2) == pytest.approx(-calibration.margin(0.8))


def test_never_is_no_threshold_at_all():
  assert calibration.margin(calibration.NEVER) == math.inf


def test_final_turns_from_the_never_matching_pass():
  """An episode ends at its first turn whose margin reaches the threshold's, or where the
  never-matching pass stopped refining (the last turn, or N = 0)."""
  margins = np.array([[0.5, -2.0, -1.0, 3.0],     # turn 1
                      [1.0, -0.5, -3.0, 0.0],     # turn 2
                      [0.0, 0.1, -4.0, 0.0]], np.float32)
  refined = np.array([[1, 1, 1, 0],               # query 3: a refiner with N = 0
                      [1, 1, 1, 0],
                      [0, 0, 0, 0]], bool)
  turn, answer = calibration.final_turns(margins, refined, 0.5)        # margin 0
  np.testing.assert_array_equal(turn, [0, 2, 2, 0])
  np.testing.assert_array_equal(answer, [True, True, False, True])
  turn, answer = calibration.final_turns(margins, refined, 0.7)        # margin 0.85
  np.testing.assert_array_equal(turn, [1, 2, 2, 0])
  np.testing.assert_array_equal(answer, [True, False, False, True])
  turn, answer = calibration.final_turns(margins, refined, calibration.NEVER)
  np.testing.assert_array_equal(turn, [2, 2, 2, 0])
  assert not answer.any()


def test_choose_best_then_nearest_half_then_as_trained():
  one = lambda scores: {(t, 1.0): v for t, v in scores.items()}
  assert calibration.choose(one({0.3: 0.1, 0.5: 0.2, 0.7: 0.25}), split="val", row="r",
                            first_turn_hits=3) == (0.7, 1.0)
  # A tie: the threshold nearest the argmax's 0.5 (then the lower one).
  assert calibration.choose(one({0.2: 0.3, 0.4: 0.3, 0.6: 0.3, 0.9: 0.1}), split="val",
                            row="r", first_turn_hits=3) == (0.4, 1.0)
  assert calibration.GRID[len(calibration.GRID) // 2] == 0.5
  # The sharpness: the best score, whatever its threshold; on a tie the one nearest x1.
  scores = {(0.5, 1.0): 0.2, (0.5, 3.0): 0.22, (0.3, 10.0): 0.24, (0.6, 10.0): 0.1}
  assert calibration.choose(scores, split="val", row="r", first_turn_hits=3) == (0.3, 10.0)
  scores = {(0.5, 1.0): 0.2, (0.5, 3.0): 0.2, (0.5, 10.0): 0.2}
  assert calibration.choose(scores, split="val", row="r", first_turn_hits=3) == (0.5, 1.0)
  assert calibration.SHARPEN_GRID[0] == 1.0     # as trained is always a candidate


def test_no_matched_example_is_refused():
  with pytest.raises(calibration.CalibrationError,
                     match=r"eval.calibrate='val': row agent_sqr's first search returns the "
                           r"true video for none .* no matched example"):
    calibration.choose({(0.5, 1.0): 0.0}, split="val", row="agent_sqr", first_turn_hits=0)


def test_split_checks():
  calibration.check_split("val", "val")
  # A source that stands another split in for a missing one (TFDS: train -> the eval split).
  with pytest.raises(calibration.CalibrationError,
                     match=r"calibrate='train': the data has no split 'train' \(its source "
                           r"stands split 'test' in for it\)"):
    calibration.check_split("train", "test")


def test_the_calibration_split_is_loaded_with_the_others():
  from vsr_jax import defaults   # pylint: disable=g-import-not-at-top
  config = defaults.base_config()
  assert calibration.with_calibration_split(config, ("train", "test")) == ("train", "test")
  config.eval.calibrate = "val"
  assert calibration.with_calibration_split(config, ("test",)) == ("test", "val")
  assert calibration.with_calibration_split(config, ("val", "test")) == ("val", "test")
