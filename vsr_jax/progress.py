"""A progress line (done/total, rate, ETA) for every long phase."""

from __future__ import annotations

import time

from absl import logging


class Progress:
  """Logs `name: done/total unit (rate/s, ETA)` at most every `every_seconds`, and at the end."""

  def __init__(self, name: str, total: int, unit: str = "steps", every_seconds: float = 10.0):
    self.name, self.total, self.unit = name, max(int(total), 0), unit
    self.every = every_seconds
    self.start = self.last = time.perf_counter()
    self.done = 0

  def due(self, done: int) -> bool:
    """Whether update(done) would log a line now (callers fetch what the line shows only then)."""
    return time.perf_counter() - self.last >= self.every or done >= self.total

  def update(self, done: int, extra: str = "") -> None:
    self.done = done
    if self.due(done):
      self.last = time.perf_counter()
      logging.info("%s", self.line(extra))

  def line(self, extra: str = "") -> str:
    elapsed = time.perf_counter() - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
    return (f"{self.name}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s, "
            f"elapsed {elapsed:.0f}s, ETA {eta_text})" + (f" {extra}" if extra else ""))

  @property
  def elapsed(self) -> float:
    return time.perf_counter() - self.start
