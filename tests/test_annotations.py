"""Tests for vsr_jax.data.annotations: real VERIFIED files and hand-made bad rows."""
import json
import os

import pytest

from vsr_jax.data import annotations as A
from vsr_jax.data.annotations import AnnotationError

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
VERIFIED = os.path.join(SHARED, "verified")

real_data = pytest.mark.skipif(
    not os.path.isdir(VERIFIED),
    reason=f"real annotation fixtures not found at {os.path.abspath(VERIFIED)}")

GOOD = {"video": "TAQ25", "time": [11.6, 17.7], "desc_id": 65, "duration": 28.0,
        "cog_desc": "the person closes the laptop.", "fig_desc": "The person closes the laptop."}


def write_lines(tmp_path, lines, name="ann.jsonl"):
  path = tmp_path / name
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def row(**changes):
  r = dict(GOOD)
  for k, v in changes.items():
    if v is _DROP:
      del r[k]
    else:
      r[k] = v
  return json.dumps(r)


_DROP = object()


# ----------------------------------------------------------------------------- real files


@real_data
@pytest.mark.parametrize("name, rows", [("charades_fig_test.jsonl", 3720),
                                        ("didemo_fig_test.jsonl", 4013)])
def test_real_files_load_and_count_clipping(name, rows):
  path = os.path.join(VERIFIED, name)
  # Independent count with plain json.
  with open(path, encoding="utf-8") as f:
    raw = [json.loads(line) for line in f if line.strip()]
  late_end = sum(r["time"][1] > r["duration"] for r in raw)
  early_start = sum(r["time"][0] < 0 for r in raw)
  assert len(raw) == rows

  moments, counts = A.read_verified(path)
  assert counts["rows"] == len(moments) == rows
  assert counts["end_clipped_to_duration"] == late_end
  assert counts.get("start_clipped_to_0", 0) == early_start
  assert late_end > 0
  for m, r in zip(moments, raw):
    assert m.video == r["video"] and m.desc_id == r["desc_id"]
    assert 0.0 <= m.start < m.end <= m.duration
    assert m.end == min(float(r["time"][1]), float(r["duration"]))
    assert m.query == r["fig_desc"].strip()
    assert m.coarse == r["cog_desc"].strip()


@real_data
def test_real_first_row():
  moments, _ = A.read_verified(os.path.join(VERIFIED, "charades_fig_test.jsonl"))
  m = moments[0]
  assert (m.video, m.start, m.end, m.duration, m.desc_id) == ("TAQ25", 11.6, 17.7, 28.0, 65)
  assert m.query.startswith("The person closes the laptop screen")
  assert m.coarse == "the person closes the laptop screen."


@real_data
def test_real_fraction_matches_readme():
  # README: about 15% (Charades-FIG) and about 4% (DiDeMo-FIG) of ends lie past the video.
  _, c = A.read_verified(os.path.join(VERIFIED, "charades_fig_test.jsonl"))
  _, d = A.read_verified(os.path.join(VERIFIED, "didemo_fig_test.jsonl"))
  assert 0.12 < c["end_clipped_to_duration"] / c["rows"] < 0.18
  assert 0.02 < d["end_clipped_to_duration"] / d["rows"] < 0.06


# ----------------------------------------------------------------------------- good small files


def test_good_rows_and_blank_lines(tmp_path):
  path = write_lines(tmp_path, [row(), "", "   ", row(desc_id=66, video="B", time=[0, 3],
                                                     fig_desc="  padded  ")])
  moments, counts = A.read_verified(path)
  assert [m.desc_id for m in moments] == [65, 66]
  assert moments[1] == A.Moment(66, "B", 0.0, 3.0, 28.0, "padded",
                                "the person closes the laptop.")
  assert dict(counts) == {"rows": 2}


def test_missing_cog_desc_is_empty(tmp_path):
  moments, _ = A.read_verified(write_lines(tmp_path, [row(cog_desc=_DROP)]))
  assert moments[0].coarse == ""


def test_start_below_zero_is_clipped_and_counted(tmp_path):
  path = write_lines(tmp_path, [row(time=[-1.5, 3.0]), row(desc_id=2, time=[-0.1, 40.0]),
                                row(desc_id=3, time=[1, 28.5])])
  moments, counts = A.read_verified(path)
  assert [(m.start, m.end) for m in moments] == [(0.0, 3.0), (0.0, 28.0), (1.0, 28.0)]
  assert counts["start_clipped_to_0"] == 2
  assert counts["end_clipped_to_duration"] == 2
  assert counts["rows"] == 3


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad, needle", [
    (row()[:-12], "not valid JSON"),                               # truncated line
    (row(duration=_DROP), "missing field 'duration'"),
    (row(fig_desc=_DROP), "missing field 'fig_desc'"),
    (row(time=["a", 3]), "field 'time' must be a number"),
    (row(time=[1, True]), "field 'time' must be a number"),
    (row(time=[1, 2, 3]), "field 'time' must be [start, end]"),
    (row(time=[5, 3]), "reversed"),
    (row(duration=0), "'duration' must be > 0"),
    (row(duration="28"), "field 'duration' must be a number"),
    (row()[:-1].replace('"duration": 28.0', '"duration": NaN') + "}", "not finite"),
    (row()[:-1].replace('"duration": 28.0', '"duration": Infinity') + "}", "not finite"),
    (row(fig_desc=""), "empty query"),
    (row(fig_desc="   "), "empty query"),
    (row(fig_desc=None), "empty query"),
    (row(cog_desc=3), "field 'cog_desc' must be a string"),
    (row(video=""), "field 'video' must be a non-empty string"),
    (row(desc_id="65"), "field 'desc_id' must be an integer"),
    (row(desc_id=6.5), "field 'desc_id' must be an integer"),
    ("[1, 2]", "expected a JSON object"),
])
def test_bad_row_names_file_and_line(tmp_path, bad, needle):
  path = write_lines(tmp_path, [row(desc_id=1), "", bad])
  with pytest.raises(AnnotationError) as e:
    A.read_verified(path)
  msg = str(e.value)
  assert msg.startswith(f"{path}:3: "), msg        # the blank line 2 still counts
  assert needle in msg


def test_moments_outside_their_video_are_dropped_counted_and_named(tmp_path):
  """The published VERIFIED training files hold a moment that starts at or after its video's
  end: it must not stop the build. Such rows, and those of no length once clipped, are
  dropped; the others are read as usual."""
  path = write_lines(tmp_path, [
      row(desc_id=1, time=[30, 35]),                  # starts after the end (28 s)
      row(desc_id=2, time=[28, 29], video="B"),       # starts at the end
      row(desc_id=3, time=[3, 3]),                    # no length
      row(desc_id=4, time=[-3, -1]),                  # no length once clipped to 0
      row(desc_id=5, time=[-1, 40])])                 # clipped at both ends, kept
  moments, counts = A.read_verified(path)
  assert [(m.desc_id, m.start, m.end) for m in moments] == [(5, 0.0, 28.0)]
  assert counts["moments_dropped_starts_at_or_after_the_end"] == 2
  assert counts["moments_dropped_of_no_length"] == 2
  assert counts["start_clipped_to_0"] == 1 and counts["end_clipped_to_duration"] == 1
  assert counts["rows"] == 1
  assert counts.dropped == ["1 TAQ25 starts_at_or_after_the_end",
                            "2 B starts_at_or_after_the_end", "3 TAQ25 of_no_length",
                            "4 TAQ25 of_no_length"]
  # A file of nothing else is an error that says why.
  only = write_lines(tmp_path, [row(desc_id=1, time=[30, 35])], name="only.jsonl")
  with pytest.raises(AnnotationError, match=r"no annotation rows \(1 dropped: 1 TAQ25"):
    A.read_verified(only)


def test_nan_duration_line_is_really_nan(tmp_path):
  # Guard for the case above: Python's json decodes NaN (so the loader must catch it).
  text = row()[:-1].replace('"duration": 28.0', '"duration": NaN') + "}"
  assert json.loads(text)["duration"] != json.loads(text)["duration"]


def test_duplicate_desc_id(tmp_path):
  path = write_lines(tmp_path, [row(), row(desc_id=7), row(video="other")])
  with pytest.raises(AnnotationError) as e:
    A.read_verified(path)
  assert str(e.value) == f"{path}:3: desc_id 65 already used on line 1"


def test_empty_file(tmp_path):
  path = write_lines(tmp_path, ["", "  "])
  with pytest.raises(AnnotationError, match="no annotation rows"):
    A.read_verified(path)


def test_parse_row_directly():
  import collections
  counts = collections.Counter()
  m = A.parse_row({"video": "v", "time": [2, 9], "desc_id": 0, "duration": 8,
                   "fig_desc": "q"}, "here", counts)
  assert (m.start, m.end, m.duration) == (2.0, 8.0, 8.0)
  assert counts == {"end_clipped_to_duration": 1}
  with pytest.raises(AnnotationError, match="^there: "):
    A.parse_row({"video": "v"}, "there", counts)


# ------------------------------------------------------------------ properties (hypothesis)

from hypothesis import given, strategies as st   # noqa: E402  pylint: disable=g-import-not-at-top

_TIMES = st.floats(-20, 80, allow_nan=False, allow_infinity=False)


@st.composite
def timed_rows(draw):
  """(start, end, duration) rows; about one in ten reversed."""
  out = []
  for _ in range(draw(st.integers(1, 8))):
    a, b = sorted((draw(_TIMES), draw(_TIMES)))
    if draw(st.integers(0, 9)) == 0 and a < b:
      a, b = b, a
    out.append((a, b, draw(st.floats(0.5, 60))))
  return out


@given(timed_rows())
def test_reader_on_generated_rows_with_every_timing_quirk(tmp_path_factory, rows):
  """Starts below 0, ends past the video, moments after its end, of no length, reversed:
  a reversed row is an error naming its line; otherwise every kept moment lies within its
  video with a length, and every row is either kept or dropped and named."""
  path = write_lines(tmp_path_factory.mktemp("gen"), [
      row(desc_id=i, video=f"V{i}", time=[s, e], duration=d) for i, (s, e, d) in
      enumerate(rows)])
  reversed_rows = [i for i, (s, e, _) in enumerate(rows) if s > e]
  if reversed_rows:
    with pytest.raises(AnnotationError, match=f":{reversed_rows[0] + 1}: .*reversed"):
      A.read_verified(path)
    return
  kept = [i for i, (s, e, d) in enumerate(rows) if s < d and min(e, d) > max(s, 0.0)]
  if not kept:
    with pytest.raises(AnnotationError, match="no annotation rows"):
      A.read_verified(path)
    return
  moments, counts = A.read_verified(path)
  assert [m.desc_id for m in moments] == kept
  for m in moments:
    s, e, d = rows[m.desc_id]
    assert 0.0 <= m.start < m.end <= m.duration == d
    assert (m.start, m.end) == (max(s, 0.0), min(e, d))
  assert len(counts.dropped) == len(rows) - len(kept) and counts["rows"] == len(kept)
  assert counts["start_clipped_to_0"] == sum(rows[i][0] < 0 for i in kept)
  assert counts["end_clipped_to_duration"] == sum(rows[i][1] > rows[i][2] for i in kept)
