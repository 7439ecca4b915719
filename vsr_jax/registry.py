"""Name -> implementation, for every kind of pluggable piece (tunix-style decorator registries).

A piece registers itself where it is defined:

  from vsr_jax import registry

  @registry.REWARDS.register("my_reward")
  def my_reward(steps, batch, cfg): ...

Each registry knows the modules that hold the built-in pieces of its kind and imports them on
first lookup (a package's modules too, so a new file dropped into `vsr_jax/stages/` registers
itself); a piece that lives in a new file elsewhere is imported through `config.imports`
(module names, imported before the config is checked). Config validation reads `names()` of
the registry: the registry is the one list of names.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any, Callable, Iterable

from vsr_jax.config_lib import ConfigError


class Registry:
  """One kind of piece (reward, refiner, index backend, ...)."""

  def __init__(self, kind: str, *homes: str):
    self.kind = kind
    self.homes = homes        # modules (or packages) that define the built-ins
    self._items: dict[str, Any] = {}
    self._loaded = False

  def register(self, name: str, value: Any = None) -> Callable:
    """Decorator (or direct call with `value`) registering `name`; a second name clashes."""
    def add(obj):
      if name in self._items and self._items[name] is not obj:
        raise ValueError(f"{self.kind} {name!r} is registered twice "
                         f"({self._items[name]!r} and {obj!r})")
      self._items[name] = obj
      return obj
    return add if value is None else add(value)

  def unregister(self, name: str) -> None:
    """For tests that register a toy piece."""
    self._items.pop(name, None)

  def _load(self) -> None:
    if self._loaded:
      return
    self._loaded = True
    for home in self.homes:
      module = importlib.import_module(home)
      for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        importlib.import_module(f"{home}.{info.name}")

  def names(self) -> tuple[str, ...]:
    self._load()
    return tuple(sorted(self._items))

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._items

  def get(self, name: str, field: str | None = None):
    """The piece called `name`; an unknown name names the config field and the known ones."""
    self._load()
    if name not in self._items:
      known = self.names()
      hint = difflib.get_close_matches(str(name), known, n=1)
      where = f"config.{field}={name!r}" if field else f"{self.kind} {name!r}"
      raise ConfigError(f"{where}: no {self.kind} of that name; known: {', '.join(known)}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    return self._items[name]

  def __getitem__(self, name: str):
    return self.get(name)

  def check(self, names: str | Iterable[str], field: str) -> None:
    for name in ([names] if isinstance(names, str) else names):
      self.get(name, field)


# Built-ins live in these packages; each module there registers its own pieces.
DATASETS = Registry("dataset source", "vsr_jax.data.sources", "vsr_jax.data.reference")
TEXT_TOWERS = Registry("text tower", "vsr_jax.engine.towers", "vsr_jax.engine.pretrained",
                       "vsr_jax.engine.qwen3_text")
INDEX_BACKENDS = Registry("index backend", "vsr_jax.engine.index")
REFINERS = Registry("refiner", "vsr_jax.agent.refiners")
AGENT_BACKBONES = Registry("agent backbone", "vsr_jax.agent.policy", "vsr_jax.agent.qwen3_trunk")
REWARDS = Registry("reward", "vsr_jax.objectives.rewards")
ADVANTAGES = Registry("advantage estimator", "vsr_jax.objectives.grpo")
AGGREGATIONS = Registry("loss aggregation", "vsr_jax.objectives.grpo")
STAGES = Registry("training stage", "vsr_jax.stages")
ROW_KINDS = Registry("method-row kind", "vsr_jax.evaluate", "vsr_jax.released_engine")


def import_extra(config) -> None:
  """Imports the modules named in config.imports (pieces that live outside the package)."""
  for name in config.get("imports", ()):
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise ConfigError(f"config.imports: cannot import {name!r} ({e})") from None
