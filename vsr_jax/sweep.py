"""Sweeps: a sweep file's points x seeds as ordinary workdirs, sharing equal stages, then tables
and plots.

  python -m vsr_jax.sweep --sweep=configs/sweeps/NAME.py[:preset] --workdir=DIR \
      [--parallel=N] [--dry_run] [--reuse=OTHER_DIR[,OTHER_DIR...]]

A sweep file defines `get_sweep(arg) -> dict` (big_vision's get_hyper, as plain data):

  config   the base config, 'configs/synthetic.py[:preset]' (required)
  base     {field: value} overrides of every point (Python values, as in a config file)
  points   [ {field: value, ...} | (name, {field: value, ...}), ... ] (required); a point
           without a name is named after its overrides ('num_latents=4')
  seeds    (0, 1, 2): each point x seed is one run, the seed going into config.seed
  swept    the field(s) on the plots' x axis (default: the fields the points set); a point's
           value is read from its config. One numeric field: a numeric axis, else one tick per
           point
  rows     method rows to tabulate and plot (default: every row of metrics.json)
  metrics  metrics to tabulate (default: vr_r1, vcmr_r1_iou0.5); `plot`: the one plotted
           against the swept value (default: the first); `plot_right`: a second one drawn
           on the same plot's right-hand axis (dashed), e.g. turns_used

Run `point_seedS` is the workdir DIR/points/<point>_seed<S>/ of the command
`python -m vsr_jax.main --config=CONFIG --workdir=... --config.a.b=VALUE ...` (stdout and
stderr in its log.txt). Every run's config is built and checked before anything runs; the
command's flags are parsed back as main parses them and must give the same config.

Sharing: runs whose key of a stage is equal (`stages.stage_keys`: the fields the stage's
training reads plus its upstream stages' keys) train it once: the first run to need it trains
it; a later one starts only once that stage is finished (`stages.finished`), with its
checkpoint folders (their final step) hard-linked into its own workdir: a stage whose folders
hold their final step is restored, not retrained. The synthetic benchmark is generated once
per data config into DIR/data/<digest>/ and hard-linked into each run's workdir/data, so the
runs' configs stay those of the dry run's commands. `--dry_run` prints one independent
command per run (no sharing) for a cluster scheduler and runs nothing. `--reuse` names earlier
sweep DIRs whose finished stages (and generated data) are hard-linked in the same way when
their keys are equal: ablations of one base config train its engine and stage-1 agent once.

DIR/sweep.json records the sweep (base config and each run's flags): a DIR holding another
sweep is refused. Finished runs (metrics.json) are skipped; failed ones are reported and
retried on the next invocation. Outputs: DIR/results.csv (run, point, seed, swept values,
row, turn, metric, value), DIR/results.md (mean ± std over seeds), DIR/<metric>.png and
DIR/per_turn_vr_r1.png.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings

from absl import app, flags
from ml_collections import config_flags

from vsr_jax import config_lib, defaults, registry, stages
from vsr_jax import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("config", "base", "points", "seeds", "swept", "rows", "metrics", "plot", "plot_right")
DEFAULT_METRICS = ("vr_r1", "vcmr_r1_iou0.5")
# Shown as they are (means per query, counts); every other metric is a fraction, shown in %.
RAW_METRICS = ("mean_rank", "num_queries", "turns_used", "searches", "refinements",
               "verify_threshold", "go_on_threshold", "span_sharpen")
PER_TURN_METRIC = "vr_r1"


class SweepError(config_lib.InputError):
  """A sweep file, point or workdir that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Run:
  name: str          # <point>_seed<S>: its folder under DIR/points/
  point: str
  seed: int
  values: dict       # the overrides, applied in order (base, then the point's, then seed)
  flags: tuple       # the same as --config.a.b=TEXT flags
  config: object     # the resolved, validated config
  swept: tuple       # the swept fields' values


@dataclasses.dataclass(frozen=True)
class Sweep:
  spec: str          # the sweep file[:arg]
  config: str        # the base config spec, as the sweep file gives it
  config_spec: str   # the same, found from here (the commands' --config)
  runs: tuple
  points: tuple      # point names, in order
  seeds: tuple
  swept: tuple
  rows: tuple
  metrics: tuple
  plot: str
  plot_right: str | None = None

  def workdir(self, root: str, run: Run) -> str:
    return os.path.join(root, "points", run.name)


# ------------------------------------------------------------------------ the sweep file

def on_synthetic(arg, path: str) -> tuple[str, dict]:
  """For a sweep file over configs/synthetic.py with presets default | reduced | smoke (`path`:
  the file, for its error): (the preset, {config: the world at that preset, seeds: one for
  smoke, three otherwise})."""
  preset = config_lib.check_preset(arg, ("default", "reduced", "smoke"), path)
  smoke = preset == "smoke"
  return preset, dict(config="configs/synthetic.py" + ("" if preset == "default" else
                                                      ":" + preset),
                     seeds=(0,) if smoke else (0, 1, 2))


def _resolve(path: str) -> str:
  """A path as given when it exists from here, else from the repository root."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  in_repo = os.path.join(REPO, path)
  return in_repo if os.path.exists(in_repo) else path


def read_file(spec: str) -> dict:
  path, _, arg = spec.partition(":")
  path = _resolve(path)
  if not os.path.isfile(path):
    raise SweepError(f"sweep file {path!r} does not exist (from --sweep={spec})")
  module = config_lib.load_module(path, "vsr_sweep_")
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"sweep file {path!r} defines no get_sweep(arg)")
  out = module.get_sweep(arg or None)
  if not isinstance(out, dict):
    raise SweepError(f"{path}: get_sweep must return a dict with the keys {', '.join(KEYS)}")
  return out


def _text(value) -> str:
  """A value as the text of a --config.a.b=TEXT flag (parsed back by config_flags)."""
  return value if isinstance(value, str) else _literal(value)


def _literal(value) -> str:
  """A Python literal with double-quoted strings (they shell-quote cleanly)."""
  if isinstance(value, str):
    return json.dumps(value)
  if isinstance(value, (tuple, list)):
    items = ", ".join(_literal(v) for v in value)
    return f"({items},)" if len(value) == 1 else f"({items})"
  if isinstance(value, dict):
    return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
  return repr(value)


def _name_part(value) -> str:
  if isinstance(value, (tuple, list)):
    return "+".join(_name_part(v) for v in value)
  return str(value)


def point_name(values: dict) -> str:
  """'num_latents=4,fine_keep=0.5' from a point's overrides; 'base' for none."""
  parts = [f"{path.rpartition('.')[2]}={_name_part(v)}" for path, v in values.items()]
  return safe_name(",".join(parts) or "base")


def safe_name(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9._=,+-]", "-", name)


def merge(*layers: dict) -> dict:
  """Overrides applied in order as one dict: a later field replaces an earlier one and every
  field under it (a section set whole), and goes last (config_flags applies flags in order)."""
  out = {}
  for layer in layers:
    for path, value in layer.items():
      for known in [k for k in out if k == path or k.startswith(path + ".")]:
        del out[known]
      out[path] = config_lib.to_dict(value) if hasattr(value, "to_json") else value
  return out


def parse_like_main(config_spec: str, flag_list) -> object:
  """The config `python -m vsr_jax.main --config=SPEC FLAGS` builds (ml_collections'
  config_flags, as main parses it)."""
  argv = ["sweep", f"--config={config_spec}", *flag_list]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  with warnings.catch_warnings():   # its config-file loader uses the deprecated load_module
    warnings.simplefilter("ignore", DeprecationWarning)
    values(argv)
  return holder.value


def build(spec: str) -> Sweep:
  """Reads a sweep file and builds every run's config, checked: a misspelt or ill-typed
  override, or a config that fails validation, is an error naming the file, point and field."""
  raw = read_file(spec)
  path = spec.partition(":")[0]
  unknown = sorted(set(raw) - set(KEYS))
  if unknown:
    raise SweepError(f"{path}: get_sweep returned unknown key(s) {', '.join(unknown)}; "
                     f"known: {', '.join(KEYS)}")
  if not isinstance(raw.get("config"), str) or not raw["config"]:
    raise SweepError(f"{path}: 'config' must name the base config, e.g. "
                     "'configs/synthetic.py:smoke'")
  config_path, colon, config_arg = raw["config"].partition(":")
  config_spec = _resolve(config_path) + colon + config_arg
  base = dict(raw.get("base") or {})
  seeds = tuple(raw.get("seeds", (0,)))
  if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    raise SweepError(f"{path}: 'seeds' must be a non-empty sequence of ints, got {seeds!r}")
  if len(set(seeds)) != len(seeds):
    raise SweepError(f"{path}: 'seeds' repeats a seed: {seeds!r}")
  points = _points(path, raw.get("points"), base)
  names = [n for n, _ in points]
  swept = raw.get("swept")
  if swept is None:
    swept = tuple(dict.fromkeys(f for _, v in points for f in v))
  swept = (swept,) if isinstance(swept, str) else tuple(swept)

  try:
    config_lib.load(config_spec)   # a bad base config spec fails once, here
  except config_lib.ConfigError as e:
    raise SweepError(f"{path}: 'config': {e}") from None
  # Every run's config first: a bad override names its point before a swept field is read.
  built = [(name, seed, *_run_config(path, config_spec, name, merge(base, v, {"seed": seed})))
           for name, v in points for seed in seeds]
  runs = []
  for name, seed, values, flag_list, config in built:
    try:
      got = tuple(_get(config, f) for f in swept)
    except KeyError as e:
      raise SweepError(f"{path}: swept field {e.args[0]!r} is no config field") from None
    runs.append(Run(f"{name}_seed{seed}", name, seed, values, flag_list, config, got))
  rows = tuple(raw.get("rows") or ())
  metrics = tuple(raw.get("metrics") or DEFAULT_METRICS)
  plot = raw.get("plot") or metrics[0]
  for field in ("rows", "metrics"):
    if not all(isinstance(x, str) for x in raw.get(field) or ()):
      raise SweepError(f"{path}: '{field}' must be a sequence of names")
  for field in ("plot", "plot_right"):
    if not isinstance(raw.get(field) or "", str):
      raise SweepError(f"{path}: '{field}' must be one metric's name, got {raw[field]!r}")
  return Sweep(spec, raw["config"], config_spec, tuple(runs), tuple(names), seeds, swept, rows,
               metrics, plot, raw.get("plot_right") or None)


def _points(path: str, raw, base: dict) -> list[tuple[str, dict]]:
  """[(name, overrides)] of the sweep file's points."""
  points = []
  for i, p in enumerate(raw or ()):
    if isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str):
      name, values = safe_name(p[0]), p[1]
    elif isinstance(p, dict):
      name, values = point_name(p), p
    else:
      raise SweepError(f"{path}: point {i} must be a dict of overrides or (name, dict), "
                       f"got {p!r}")
    if not isinstance(values, dict):
      raise SweepError(f"{path}: point {name}: overrides must be a dict, got {values!r}")
    if "seed" in values or "seed" in base:
      raise SweepError(f"{path}: point {name}: 'seed' comes from the sweep's seeds, not an "
                       "override")
    points.append((name, dict(values)))
  if not points:
    raise SweepError(f"{path}: 'points' must list at least one point")
  names = [n for n, _ in points]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise SweepError(f"{path}: two points are named {twice[0]!r}; name them: "
                     "points=[('name', {...}), ...]")
  return points


def _run_config(path: str, config_spec: str, name: str, values: dict):
  """(values, flags, config) of one run: set and validated, and the flags checked to give the
  same config through main's parser."""
  where = f"sweep point {name}: "
  config = config_lib.load(config_spec)
  try:
    # No `where` here: set_values would repeat it inside its 'did you mean ...' hint.
    config_lib.set_values(config, values)
    defaults.validate(config)
  except config_lib.ConfigError as e:
    raise SweepError(f"{path}: {where}{e}") from None
  flag_list = tuple(f"--config.{k}={_text(v)}" for k, v in values.items())
  try:
    parsed = parse_like_main(config_spec, flag_list)
  except Exception as e:   # pylint: disable=broad-except (config_flags raises many types)
    raise SweepError(f"{path}: {where}its command line cannot set these values "
                     f"({type(e).__name__}: {e})") from None
  differ = config_lib.diff(config_lib.to_dict(parsed), config_lib.to_dict(config))
  if differ:
    raise SweepError(f"{path}: {where}the command line would not reproduce "
                     f"{', '.join(differ)} (a value config_flags cannot parse back)")
  return values, flag_list, config


def _get(config, path: str):
  node = config
  for part in path.split("."):
    node = node[part]
  return config_lib.to_dict(node) if hasattr(node, "to_json") else node


def command(sweep: Sweep, root: str, run: Run) -> list[str]:
  """The ordinary command that runs `run` (its workdir under `root`)."""
  return [sys.executable, "-m", "vsr_jax.main", f"--config={sweep.config_spec}",
          f"--workdir={sweep.workdir(root, run)}", *run.flags]


# ------------------------------------------------------------------------ DIR/sweep.json

def record(sweep: Sweep) -> dict:
  return {"sweep": sweep.spec, "config": sweep.config,
          "runs": {r.name: list(r.flags) for r in sweep.runs}}


def check_record(root: str, sweep: Sweep) -> None:
  """Refuses a DIR whose sweep.json records another sweep, naming the difference."""
  path = os.path.join(root, "sweep.json")
  if not os.path.isfile(path):
    return
  saved, now = workdir_lib.read_json(path), record(sweep)
  differ = []
  if saved.get("config") != now["config"]:
    differ.append(f"base config {saved.get('config')!r} there, {now['config']!r} here")
  old, new = saved.get("runs", {}), now["runs"]
  for names, where in ((set(old) - set(new), "there"), (set(new) - set(old), "here")):
    if names:
      differ.append(f"runs only {where}: {_some(sorted(names))}")
  for name in [n for n in new if n in old and old[n] != new[n]][:1]:
    a = [f for f in old[name] if f not in new[name]]
    b = [f for f in new[name] if f not in old[name]]
    differ.append(f"run {name}: {_some(a, ' ') or 'no flag'} there, {_some(b, ' ') or 'no flag'}"
                  " here")
  if differ:
    raise SweepError(f"{path} records another sweep ({saved.get('sweep')}): "
                     f"{'; '.join(differ)}. Use another --workdir")


def _some(items, sep: str = ", ", n: int = 3) -> str:
  """The first n items and how many more."""
  more = f"{sep}and {len(items) - n} more" if len(items) > n else ""
  return sep.join(items[:n]) + more


# ------------------------------------------------------------------------ sharing

def stage_groups(sweep: Sweep) -> dict:
  """{run name: {stage: (stage, key)}}: runs with an equal (stage, key) share its training."""
  return {r.name: {s: (s, k) for s, k in stages.stage_keys(r.config).items()}
          for r in sweep.runs}


def sharing_summary(sweep: Sweep, groups: dict) -> list[str]:
  """'engine: 1 training for 6 runs' per stage."""
  out = []
  names = list(dict.fromkeys(s for g in groups.values() for s in g))
  for stage in names:
    keys = [g[stage] for g in groups.values() if stage in g]
    n = len(set(keys))
    out.append(f"{stage}: {n} training{'s' * (n != 1)} for {len(keys)} run"
               f"{'s' * (len(keys) != 1)}")
  return out


def data_key(config) -> str | None:
  """The digest of a run's generated data, when the sweep may generate it once (synthetic,
  into the default <workdir>/data)."""
  if config.data.source != "synthetic" or config.data.dir:
    return None
  from vsr_jax.data import store   # pylint: disable=g-import-not-at-top
  text = json.dumps(store.synthetic_spec(config.data), sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def link_tree(src: str, dst: str, only: str | None = None) -> None:
  """dst as hard links to src's files (an unfinished dst is replaced); only: the one entry of
  src's top level to take."""
  if os.path.isdir(dst):
    shutil.rmtree(dst)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  ignore = None
  if only is not None:
    ignore = lambda d, names: [n for n in names if n != only] if d == src else []
  shutil.copytree(src, dst, copy_function=os.link, ignore=ignore)


def link_stage(config, src_workdir: str, dst_workdir: str, stage: str) -> None:
  """A finished stage's checkpoint folders, final step only: its run may still be running
  (and deleting its older steps)."""
  for folder, steps in registry.STAGES.get(stage).folders(config):
    link_tree(os.path.join(src_workdir, "checkpoints", folder),
              os.path.join(dst_workdir, "checkpoints", folder), only=str(steps))


@dataclasses.dataclass(frozen=True)
class Donor:
  """A run of another sweep (--reuse) whose finished stages this sweep may link."""
  name: str          # OTHER_DIR/points/<run>, for the log
  workdir: str
  config: object
  keys: dict         # {stage: key}


def donors(roots, root: str) -> list[Donor]:
  """The runs under each earlier sweep DIR in `roots` (a DIR that holds no sweep is an error)."""
  out = []
  for other in roots:
    if os.path.abspath(other) == os.path.abspath(root):
      continue
    if not os.path.isfile(os.path.join(other, "sweep.json")):
      raise SweepError(f"--reuse={other}: no sweep.json there (not a sweep workdir)")
    points = os.path.join(other, "points")
    for name in sorted(os.listdir(points)) if os.path.isdir(points) else ():
      workdir = os.path.join(points, name)
      if not os.path.isfile(os.path.join(workdir, "config.json")):
        continue
      try:
        config = workdir_lib.read_config(workdir)
        keys = stages.stage_keys(config)
      except config_lib.InputError as e:   # a run of older code: not a donor, said so
        warnings.warn(f"--reuse: {workdir} is skipped ({e})")
        continue
      out.append(Donor(os.path.join(other, "points", name), workdir, config, keys))
  return out


class Scheduler:
  """Runs the runs as subprocesses, at most `parallel` at once, a run only once every stage it
  shares can be linked from a finished run (or it trains the stage itself)."""

  def __init__(self, sweep: Sweep, root: str, parallel: int, out=print, reuse=()):
    self.sweep, self.root, self.parallel, self.out = sweep, root, parallel, out
    self.donors = list(reuse)
    self.groups = stage_groups(sweep)
    self.by_name = {r.name: r for r in sweep.runs}
    self.trainer = {}     # (stage, key) -> the run training it now
    self.done, self.failed = [], {}   # failed: name -> exit status
    self.seconds = {}
    self.running = {}     # name -> (process, log file, start time)

  def workdir(self, run: Run) -> str:
    return self.sweep.workdir(self.root, run)

  def source(self, run: Run, stage: str):
    """(name, workdir) of another run of the same stage key whose checkpoints hold the
    finished stage (it may be running a later stage; this sweep's runs first, then --reuse's),
    or None."""
    group = self.groups[run.name][stage]
    for other in self.sweep.runs:
      if (other is not run and self.groups[other.name].get(stage) == group and
          stages.finished(other.config, self.workdir(other), stage)):
        return other.name, self.workdir(other)
    for donor in self.donors:
      if ((stage, donor.keys.get(stage)) == group and
          stages.finished(donor.config, donor.workdir, stage)):
        return donor.name, donor.workdir
    return None

  def plan(self, run: Run):
    """(links {stage: source run}, trains [stage]) or None when it must wait."""
    links, trains = {}, []
    for stage in run.config.stages:
      if stages.finished(run.config, self.workdir(run), stage):
        continue
      src = self.source(run, stage)
      if src is not None:
        links[stage] = src
        continue
      owner = self.trainer.get(self.groups[run.name][stage])
      if owner not in (None, run.name):
        return None
      trains.append(stage)
    return links, trains

  def start(self, run: Run, links: dict, trains: list):
    workdir = self.workdir(run)
    os.makedirs(workdir, exist_ok=True)
    data = data_key(run.config)
    if data and not os.path.isfile(os.path.join(workdir, "data", "meta.json")):
      link_tree(os.path.join(self.root, "data", data), os.path.join(workdir, "data"))
    for stage, (_, src) in links.items():
      link_stage(run.config, src, workdir, stage)
    for stage in trains:
      self.trainer[self.groups[run.name][stage]] = run.name
    cmd = command(self.sweep, self.root, run)
    log = open(os.path.join(workdir, "log.txt"), "a", encoding="utf-8")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    reuse = ", ".join(f"{s} from {src}" for s, (src, _) in links.items())
    self.out(f"start {run.name}: trains {', '.join(trains) or 'nothing'}"
             + (f"; reuses {reuse}" if reuse else ""))
    return proc, log, time.monotonic()

  def finish(self, run: Run, status: int, seconds: float):
    self.seconds[run.name] = seconds
    ok = status == 0 and os.path.isfile(os.path.join(self.workdir(run), "metrics.json"))
    if ok:
      self.done.append(run.name)
      self.out(f"done {run.name} in {seconds:.1f} s")
    else:
      self.failed[run.name] = status
      self.out(f"FAILED {run.name} (exit status {status}) after {seconds:.1f} s; "
               f"see {os.path.join(self.workdir(run), 'log.txt')}")
    # A stage its run left unfinished goes to the next run that needs it.
    for group, owner in list(self.trainer.items()):
      if owner == run.name:
        del self.trainer[group]

  def run(self, todo: list[Run]) -> None:
    pending = list(todo)
    try:
      while pending or self.running:
        while len(self.running) < self.parallel:
          for run in pending:
            plan = self.plan(run)
            if plan is not None:
              pending.remove(run)
              self.running[run.name] = self.start(run, *plan)
              break
          else:
            break
        if not self.running:
          raise RuntimeError(f"sweep scheduler: nothing can start ({pending[0].name} waits)")
        time.sleep(0.2)
        for name, (proc, log, t0) in list(self.running.items()):
          status = proc.poll()
          if status is not None:
            log.close()
            del self.running[name]
            self.finish(self.by_name[name], status, time.monotonic() - t0)
    finally:
      for proc, log, _ in self.running.values():   # interrupted: stop the runs we started
        proc.terminate()
        proc.wait()
        log.close()


def tail(path: str, n: int = 15) -> str:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return "".join(collections.deque(f, n))
  except OSError:
    return "(no log)\n"


# ------------------------------------------------------------------------ results

def load_results(sweep: Sweep, root: str) -> dict:
  """{run name: metrics.json} of the finished runs."""
  out = {}
  for run in sweep.runs:
    path = os.path.join(sweep.workdir(root, run), "metrics.json")
    if os.path.isfile(path):
      out[run.name] = workdir_lib.read_json(path)
  return out


def long_rows(sweep: Sweep, results: dict):
  """(run, point, seed, swept values..., row, turn, metric, value): turn '' for the run's final
  metrics, 1..T for each turn's."""
  for run in sweep.runs:
    for row, metrics in results.get(run.name, {}).items():
      head = (run.name, run.point, run.seed, *[_cell_text(v) for v in run.swept], row)
      for metric, value in metrics.items():
        if metric != "per_turn":
          yield (*head, "", metric, value)
      for t, turn in enumerate(metrics.get("per_turn", ()), 1):
        for metric, value in turn.items():
          yield (*head, t, metric, value)


def _cell_text(value) -> str:
  return _name_part(value) if isinstance(value, (tuple, list)) else str(value)


def write_csv(sweep: Sweep, results: dict, path: str) -> None:
  import csv   # pylint: disable=g-import-not-at-top
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["run", "point", "seed", *sweep.swept, "row", "turn", "metric", "value"])
    w.writerows(long_rows(sweep, results))
  os.replace(tmp, path)


def summary(values) -> tuple[float, float, int]:
  """(mean, std with ddof 1 (nan for one value), n)."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return mean, std, n


def stats(sweep: Sweep, results: dict, metric: str, turn: int | None = None) -> dict:
  """{(point, row): (mean, std, n)} over the point's finished seeds (turn: 1-based per turn)."""
  values = collections.defaultdict(list)
  for run in sweep.runs:
    for row, metrics in results.get(run.name, {}).items():
      if turn is None:
        if metric in metrics:
          values[run.point, row].append(float(metrics[metric]))
      elif len(metrics.get("per_turn", ())) >= turn and metric in metrics["per_turn"][turn - 1]:
        values[run.point, row].append(float(metrics["per_turn"][turn - 1][metric]))
  return {k: summary(v) for k, v in values.items()}


def fmt(mean: float, std: float, metric: str) -> str:
  if metric.endswith(RAW_METRICS):   # counts per query need the second decimal (1.62 turns)
    spread = "–" if math.isnan(std) else f"{std:.2f}"
    return f"{mean:.2f} ± {spread}"
  spread = "–" if math.isnan(std) else f"{100 * std:.1f}"
  return f"{100 * mean:.1f} ± {spread}"


def table_rows(sweep: Sweep, results: dict) -> list[str]:
  rows = list(sweep.rows) or list(dict.fromkeys(r for m in results.values() for r in m))
  return rows


def markdown(sweep: Sweep, results: dict) -> str:
  rows = table_rows(sweep, results)
  point_runs = collections.defaultdict(list)
  for run in sweep.runs:
    point_runs[run.point].append(run)
  lines = [f"# Sweep `{sweep.spec}`", "",
           f"Base config `{sweep.config}`; {len(sweep.points)} points × seeds "
           f"{', '.join(map(str, sweep.seeds))}; {len(results)} of {len(sweep.runs)} runs "
           "finished. Mean ± std over seeds (ddof 1; – with one seed); metrics in % "
           f"({', '.join(RAW_METRICS)} as they are)."]
  for metric in sweep.metrics:
    cells = stats(sweep, results, metric)
    head = ["point", *sweep.swept, "seeds", *rows]
    lines += ["", f"## {metric}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point in sweep.points:
      runs = point_runs[point]
      n = sum(r.name in results for r in runs)
      line = [point, *[_cell_text(v) for v in runs[0].swept], str(n)]
      for row in rows:
        line.append(fmt(*cells[point, row][:2], metric) if (point, row) in cells else "–")
      lines.append("| " + " | ".join(line) + " |")
  return "\n".join(lines) + "\n"


def _x_axis(sweep: Sweep):
  """(x per point, tick labels or None, label): numeric for one numeric swept field."""
  first = {}
  for run in sweep.runs:
    first.setdefault(run.point, run)
  values = [first[p].swept for p in sweep.points]
  numeric = len(sweep.swept) == 1 and all(
      isinstance(v[0], (int, float)) and not isinstance(v[0], bool) for v in values)
  if numeric and len({v[0] for v in values}) == len(values):
    return [v[0] for v in values], None, sweep.swept[0]
  return list(range(len(sweep.points))), list(sweep.points), "point"


def _scale(metric: str) -> int:
  return 1 if metric.endswith(RAW_METRICS) else 100


def _draw(ax, sweep: Sweep, results: dict, metric: str, rows, xs, **style) -> dict:
  """{row: its line}: `metric` against the swept value, std over seeds as error bars (a row
  keeps its colour on both axes)."""
  cells, scale, lines = stats(sweep, results, metric), _scale(metric), {}
  for i, row in enumerate(rows):
    pts = [(x, cells[p, row]) for x, p in zip(xs, sweep.points) if (p, row) in cells]
    if pts:
      lines[row] = ax.errorbar(
          [x for x, _ in pts], [scale * s[0] for _, s in pts],
          yerr=[0 if math.isnan(s[1]) else scale * s[1] for _, s in pts], capsize=3,
          color=f"C{i}", **style)
  ax.set_ylabel(metric + (" (%)" if scale == 100 else ""))
  return lines


def plot(sweep: Sweep, results: dict, root: str) -> list[str]:
  """DIR/<plot metric>.png (against the swept value, one line per row, std over seeds as error
  bars; `plot_right` dashed on a right-hand axis) and DIR/per_turn_vr_r1.png (per turn, one
  panel per row, one line per point)."""
  import matplotlib   # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt   # pylint: disable=g-import-not-at-top
  rows = table_rows(sweep, results)
  xs, ticks, xlabel = _x_axis(sweep)
  written = []

  fig, ax = plt.subplots(figsize=(6.4 if sweep.plot_right else 6, 4))
  lines = _draw(ax, sweep, results, sweep.plot, rows, xs, marker="o")
  handles, labels = list(lines.values()), list(lines)
  if sweep.plot_right:
    right = ax.twinx()
    dashed = _draw(right, sweep, results, sweep.plot_right, rows, xs, marker="s",
                   linestyle="--", alpha=0.7)
    right.set_ylabel(f"{sweep.plot_right} (dashed)")
    if dashed:
      handles.append(next(iter(dashed.values())))
      labels.append(f"{sweep.plot_right} (dashed, right axis)")
  if ticks:
    ax.set_xticks(xs, ticks, rotation=20, ha="right")
  elif all(isinstance(x, int) for x in xs):
    ax.set_xticks(xs)
  ax.set_xlabel(xlabel)
  ax.set_title(sweep.spec, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(handles, labels, fontsize=8)
  fig.tight_layout()
  written.append(os.path.join(root, f"{safe_name(sweep.plot)}.png"))
  fig.savefig(written[-1], dpi=100)
  plt.close(fig)

  turns = max((len(m.get("per_turn", ())) for r in results.values() for m in r.values()),
              default=0)
  fig, axes = plt.subplots(1, max(len(rows), 1), figsize=(3.2 * max(len(rows), 1), 3.4),
                           squeeze=False, sharey=True)
  for ax, row in zip(axes[0], rows):
    for point in sweep.points:
      pts = []
      for t in range(1, turns + 1):
        cell = stats(sweep, results, PER_TURN_METRIC, turn=t).get((point, row))
        if cell:
          pts.append((t, cell))
      if pts:
        ax.errorbar([t for t, _ in pts], [100 * c[0] for _, c in pts],
                    yerr=[0 if math.isnan(c[1]) else 100 * c[1] for _, c in pts],
                    marker="o", capsize=3, label=point)
    ax.set_title(row, fontsize=9)
    ax.set_xlabel("turn")
    ax.set_xticks(range(1, turns + 1))
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"{PER_TURN_METRIC} (%)")
  if axes[0][-1].get_legend_handles_labels()[0]:
    axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  written.append(os.path.join(root, f"per_turn_{PER_TURN_METRIC}.png"))
  fig.savefig(written[-1], dpi=100)
  plt.close(fig)
  return written


def write_results(sweep: Sweep, root: str) -> dict:
  """results.csv, results.md and the plots from the finished runs' metrics.json."""
  results = load_results(sweep, root)
  write_csv(sweep, results, os.path.join(root, "results.csv"))
  text = markdown(sweep, results)
  tmp = os.path.join(root, f"results.md.tmp-{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, os.path.join(root, "results.md"))
  if results:
    plot(sweep, results, root)
  return results


# ------------------------------------------------------------------------ the runner

def run_sweep(spec: str, root: str, *, parallel: int = 1, dry_run: bool = False,
              reuse=(), out=print) -> int:
  """Runs (or, dry_run, prints the commands of) a sweep; returns the exit status."""
  if parallel < 1:
    raise SweepError(f"--parallel={parallel}: expected >= 1")
  t0 = time.monotonic()
  sweep = build(spec)
  if dry_run:   # stdout: one command per run, nothing else (a job array reads line N)
    for run in sweep.runs:
      out(shlex.join(command(sweep, root, run)))
    return 0
  check_record(root, sweep)
  given = donors(reuse, root)
  os.makedirs(root, exist_ok=True)
  workdir_lib.write_json(os.path.join(root, "sweep.json"), record(sweep))
  groups = stage_groups(sweep)
  finished = [r for r in sweep.runs
              if os.path.isfile(os.path.join(sweep.workdir(root, r), "metrics.json"))]
  todo = [r for r in sweep.runs if r not in finished]
  out(f"sweep {spec}: {len(sweep.runs)} runs ({len(sweep.points)} points × seeds "
      f"{', '.join(map(str, sweep.seeds))}); {len(finished)} finished (skipped), "
      f"{len(todo)} to run")
  out("shared stage trainings: " + "; ".join(sharing_summary(sweep, groups)))

  # The synthetic data once per data config (generating is not safe in parallel).
  datas = {}
  for run in todo:
    key = data_key(run.config)
    if key and not os.path.isfile(os.path.join(sweep.workdir(root, run), "data", "meta.json")):
      datas.setdefault(key, run)
  for key in list(datas):   # generated by an earlier sweep (--reuse): linked
    dst = os.path.join(root, "data", key)
    for other in reuse:
      src = os.path.join(other, "data", key)
      if not os.path.isfile(os.path.join(dst, "meta.json")) and os.path.isfile(
          os.path.join(src, "meta.json")):
        link_tree(src, dst)
        out(f"data {key}: linked from {src}")
    if os.path.isfile(os.path.join(dst, "meta.json")):
      del datas[key]
  if datas:
    from vsr_jax.data import store   # pylint: disable=g-import-not-at-top
    for key, run in datas.items():
      t = time.monotonic()
      store.write_synthetic(run.config.data, os.path.join(root, "data", key),
                            progress_seconds=run.config.log.progress_seconds)
      out(f"data {key}: ready in {time.monotonic() - t:.1f} s (hard-linked into each run)")

  scheduler = Scheduler(sweep, root, parallel, out, given)
  scheduler.run(todo)
  write_results(sweep, root)
  wall = time.monotonic() - t0
  trained = sum(scheduler.seconds.values())
  out(f"sweep {spec}: {len(scheduler.done)} ran, {len(finished)} skipped, "
      f"{len(scheduler.failed)} failed; wall time {wall:.1f} s (runs {trained:.1f} s); "
      f"results in {os.path.join(root, 'results.md')}")
  for name, status in scheduler.failed.items():
    log = os.path.join(sweep.workdir(root, scheduler.by_name[name]), "log.txt")
    sys.stderr.write(f"FAILED {name} (exit status {status}); last lines of {log}:\n"
                     f"{tail(log)}")
  return 1 if scheduler.failed else 0


flags.DEFINE_string("sweep", None, "Sweep file: configs/sweeps/NAME.py[:preset].")
flags.DEFINE_string("workdir", None, "Directory of the sweep (its runs under points/).")
flags.DEFINE_integer("parallel", 1, "Runs at once (subprocesses).")
flags.DEFINE_bool("dry_run", False, "Print one command per run and run nothing.")
flags.DEFINE_list("reuse", [], "Earlier sweep DIRs whose finished stages of equal key (and "
                  "generated data) this sweep links instead of training them again.")


def main(argv):
  del argv
  f = flags.FLAGS
  try:
    status = run_sweep(f.sweep, f.workdir, parallel=f.parallel, dry_run=f.dry_run,
                       reuse=f.reuse)
  except config_lib.InputError as e:
    sys.exit(f"error: {e}")
  sys.exit(status)


if __name__ == "__main__":
  flags.mark_flags_as_required(["sweep", "workdir"])
  app.run(main)
