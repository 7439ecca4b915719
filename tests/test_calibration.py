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


def test_a_pair_is_one_threshold_for_the_go_on_turns_and_one_for_the_last():
  """(go-on, final): every turn but the last compares with the first, the last with the
  second; a single threshold is the pair of it."""
  np.testing.assert_array_equal(calibration.turn_margins(0.5, 3), [0.0, 0.0, 0.0])
  got = calibration.turn_margins((0.8, 0.2), 3)
  assert got.dtype == np.float32 and got[0] == got[1] == np.float32(calibration.margin(0.8))
  assert got[2] == np.float32(calibration.margin(0.2))
  assert calibration.turn_margins((0.8, 0.2), 1)[0] == np.float32(calibration.margin(0.2))
  margins = np.array([[1.0, 0.5, -3.0],           # turn 1: p 0.73, 0.62, 0.05
                      [0.5, -1.0, -1.0]], np.float32)   # turn 2 (last)
  refined = np.array([[1, 1, 1], [0, 0, 0]], bool)
  turn, answer = calibration.final_turns(margins, refined, (0.7, 0.2))
  np.testing.assert_array_equal(turn, [0, 1, 1])
  np.testing.assert_array_equal(answer, [True, True, True])    # p(-1) = 0.27 >= 0.2
  turn, answer = calibration.final_turns(margins, refined, (0.5, 0.5))
  np.testing.assert_array_equal(turn, [0, 0, 1])
  np.testing.assert_array_equal(answer, [True, True, False])
  assert calibration.candidates(1) == list(calibration.GRID)
  pairs = calibration.candidates(2)
  assert len(pairs) == len(calibration.GRID) ** 2 and calibration.argmax(2) in pairs
  assert calibration.candidates(5) == pairs and calibration.argmax(1) == 0.5


def test_choose_keeps_the_verdicts_at_least_as_accurate_as_the_argmax():
  """min_ver: a threshold whose VER falls below it does not compete, however high its VCMR;
  the argmax (VER equal to the floor) always does."""
  scores = {((0.5, 0.5), 1.0): 0.19, ((0.8, 0.05), 1.0): 0.21, ((0.8, 0.3), 1.0): 0.195,
            ((0.9, 0.9), 1.0): 0.10}
  ver = {(0.5, 0.5): 0.70, (0.8, 0.05): 0.60, (0.8, 0.3): 0.75, (0.9, 0.9): 0.85}
  kw = dict(split="val", row="r", first_turn_hits=3, ver=ver)
  assert calibration.choose(scores, **kw) == ((0.8, 0.05), 1.0)              # VCMR alone
  assert calibration.choose(scores, min_ver=0.70, **kw) == ((0.8, 0.3), 1.0)
  assert calibration.choose(scores, min_ver=0.80, **kw) == ((0.9, 0.9), 1.0)
  # Ties between pairs: the go-on threshold nearest 0.5 first, then the final one.
  tie = {((0.3, 0.5), 1.0): 0.2, ((0.5, 0.2), 1.0): 0.2, ((0.5, 0.6), 1.0): 0.2}
  assert calibration.choose(tie, split="val", row="r", first_turn_hits=3) == ((0.5, 0.6), 1.0)


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
