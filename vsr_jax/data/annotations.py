"""Reading VERIFIED-style annotation JSONL, checked row by row.

A row: {"video": "TAQ25", "time": [11.6, 17.7], "desc_id": 65, "duration": 28.0,
        "cog_desc": "...", "fig_desc": "..."}; the query is `fig_desc`.
Every problem names the file and line. Moments that poke past the video are corrected and
counted (the real Charades-FIG files have ~15% of rows with an end beyond `duration`); a
moment that starts at or after its video's end, or has no length once clipped (the published
VERIFIED training files hold such rows), is dropped, counted and named (desc_id, video); what
else cannot be used (malformed JSON, a missing or mistyped field) is an error.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math

from absl import logging

from vsr_jax import config_lib


class AnnotationError(config_lib.InputError):
  """An annotation row that cannot be used; the message names file, line and field."""


class Dropped(Exception):
  """A well-formed row that is no moment of its video: read_moments drops, counts and names it
  (it does not stop the read)."""

  def __init__(self, reason: str, desc_id: int, video: str, detail: str):
    super().__init__(detail)
    self.reason, self.desc_id, self.video, self.detail = reason, desc_id, video, detail


class Corrections(collections.Counter):
  """Counts of the corrections made while reading, plus `dropped`: the dropped rows as
  'desc_id video reason' strings, in file order."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.dropped = []


@dataclasses.dataclass(frozen=True)
class Moment:
  desc_id: int
  video: str
  start: float
  end: float
  duration: float
  query: str           # fig_desc
  coarse: str          # cog_desc ('' when the file has none)


REQUIRED = ("video", "time", "desc_id", "duration", "fig_desc")


def _number(where: str, field: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise AnnotationError(f"{where}: field {field!r} must be a number, got {value!r}")
  if not math.isfinite(value):
    raise AnnotationError(f"{where}: field {field!r} is not finite ({value!r})")
  return float(value)


def clip_to_video(start: float, end: float, duration: float, desc_id: int, video: str,
                  counts: collections.Counter) -> tuple[float, float]:
  """[start, end] clipped to [0, duration] (counted); raises Dropped for a moment that starts
  at or after the video's end or has no length once clipped."""
  if start >= duration:
    raise Dropped("starts_at_or_after_the_end", desc_id, video,
                  f"moment [{start}, {end}] starts at or after the video's end ({duration} s)")
  clipped = max(start, 0.0), min(end, duration)
  if clipped[1] <= clipped[0]:
    raise Dropped("of_no_length", desc_id, video,
                  f"moment [{start}, {end}] has no length within [0, {duration}]")
  if start < 0:
    counts["start_clipped_to_0"] += 1
  if end > duration:
    counts["end_clipped_to_duration"] += 1
  return clipped


def parse_row(row, where: str, counts: collections.Counter) -> Moment:
  """Checks one decoded row; corrections are added to `counts`."""
  if not isinstance(row, dict):
    raise AnnotationError(f"{where}: expected a JSON object, got {type(row).__name__}")
  for field in REQUIRED:
    if field not in row:
      raise AnnotationError(f"{where}: missing field {field!r} (row has {sorted(row)})")
  video = row["video"]
  if not isinstance(video, str) or not video:
    raise AnnotationError(f"{where}: field 'video' must be a non-empty string, got {video!r}")
  desc_id = row["desc_id"]
  if isinstance(desc_id, bool) or not isinstance(desc_id, int):
    raise AnnotationError(f"{where}: field 'desc_id' must be an integer, got {desc_id!r}")
  duration = _number(where, "duration", row["duration"])
  if duration <= 0:
    raise AnnotationError(f"{where}: field 'duration' must be > 0, got {duration}")
  time = row["time"]
  if not isinstance(time, (list, tuple)) or len(time) != 2:
    raise AnnotationError(f"{where}: field 'time' must be [start, end], got {time!r}")
  start, end = (_number(where, "time", t) for t in time)
  if start > end:
    raise AnnotationError(f"{where}: field 'time' is reversed: start {start} > end {end}")
  query = row["fig_desc"]
  if not isinstance(query, str) or not query.strip():
    raise AnnotationError(f"{where}: empty query (field 'fig_desc' is {query!r})")
  coarse = row.get("cog_desc", "")
  if not isinstance(coarse, str):
    raise AnnotationError(f"{where}: field 'cog_desc' must be a string, got {coarse!r}")
  start, end = clip_to_video(start, end, duration, desc_id, video, counts)
  return Moment(desc_id, video, start, end, duration, query.strip(), coarse.strip())


def jsonl_rows(path: str, error, hint: str = ""):
  """(line number, 'path:line', parsed row) for each non-blank line of a JSONL file; a line that
  is not JSON raises `error` naming the file, line and column (`hint` appended)."""
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        yield lineno, where, json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None


def read_moments(path: str, parse, error=None) -> tuple[list[Moment], collections.Counter]:
  """Reads an annotation JSONL file row by row with parse(row, where, counts) -> Moment.

  Blank lines are skipped; a line that is not JSON, a repeated desc_id or an empty file raise
  `error` (default AnnotationError) naming the file and line; a row for which parse raises
  Dropped is logged, counted ('moments_dropped_<reason>') and named in counts.dropped. Returns the
  moments in file order and the Corrections parse counted, plus 'rows' (the moments kept).
  """
  error = error or AnnotationError
  counts = Corrections()
  moments, seen = [], {}
  for lineno, where, row in jsonl_rows(path, error, "; is the line truncated?"):
    try:
      moment = parse(row, where, counts)
    except Dropped as d:
      counts[f"moments_dropped_{d.reason}"] += 1
      counts.dropped.append(f"{d.desc_id} {d.video} {d.reason}")
      logging.warning("%s: desc_id %d (video %s): %s: dropped", where, d.desc_id, d.video,
                      d.detail)
      continue
    if moment.desc_id in seen:
      raise error(
          f"{where}: desc_id {moment.desc_id} already used on line {seen[moment.desc_id]}")
    seen[moment.desc_id] = lineno
    moments.append(moment)
  if not moments:
    dropped = f" ({len(counts.dropped)} dropped: {', '.join(counts.dropped[:5])})" * bool(
        counts.dropped)
    raise error(f"{path}: no annotation rows{dropped}")
  for what, n in sorted(counts.items()):
    logging.info("%s: %s in %d of %d rows", path, what.replace("_", " "), n, len(moments))
  counts["rows"] = len(moments)
  return moments, counts


def read_verified(path: str) -> tuple[list[Moment], collections.Counter]:
  """Reads a VERIFIED annotation file; returns the moments and the corrections made."""
  return read_moments(path, parse_row)
