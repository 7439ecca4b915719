"""Achieved FLOP/s of each training stage's compiled step, against a plain matmul's.

  python experiments/step_efficiency.py [--config=configs/synthetic.py[:preset]] \
      [--stages=engine,sft,grpo] [--steps=5] [--matmul_n=1024] [--train_videos=2000]

Builds each stage's loop as the stage does (`Stage.loop(ctx)`: its fresh state, its jitted
step, its first batch) over a train split generated in memory, compiles the step, reads its
FLOPs from XLA's cost analysis, times `--steps` calls after `--warmup` ones and prints FLOP/s
and the fraction of a jitted float32 [n, n] x [n, n] matmul's FLOP/s (2 n^3 per call),
measured in this process right before and after each stage's steps. The steps have the
config's real sizes (batch, frames, widths, group); only the train split is smaller by
default (`--train_videos=0`: the config's, 12,000 videos for the default world; it is the
corpus the SFT step's corpus negatives and the GRPO episodes search, a few % of their FLOPs).
This measures cost, not learning: the engine is whatever the timed engine steps trained, the
GRPO step starts from the timed SFT state (as stage 2 starts from stage 1).

XLA's cost analysis counts a while loop's body once (lax.scan: the episode's turns, GRPO's
updates per batch; the CPU's threefry loops). The FLOPs here add (trip count - 1) x each
body's FLOPs, counted from the optimized HLO (`hlo_costs`). --breakdown prints what the
step's kernels are and, from `--profile_steps` steps under jax.profiler (XLA's per-kernel
trace events), where its time goes: per kind of kernel (dot, conv, gather, elementwise, ...)
its share of the FLOPs, of the kernel time and its GFLOP/s, and the slowest kernels.
"""

from __future__ import annotations

import collections
import functools
import glob
import gzip
import json
import math
import os
import re
import shutil
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from vsr_jax import registry, stages
from vsr_jax.data import store, synthetic, tokenizer as tokenizer_lib
from vsr_jax.engine import towers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(REPO, "configs", "synthetic.py"),
    "Config file[:preset]; --config.a.b=value overrides a field.")
flags.DEFINE_list("stages", ["engine", "sft", "grpo"],
                  "Steps to measure, in order: engine | engine_text | sft | sft_hqr | grpo.")
flags.DEFINE_integer("steps", 5, "Timed calls per step.")
flags.DEFINE_integer("warmup", 2, "Untimed calls before them (the first one also allocates).")
flags.DEFINE_integer("matmul_n", 1024, "Size n of the reference [n, n] x [n, n] matmul.")
flags.DEFINE_integer("train_videos", 2000, "Videos of the in-memory train split, at most "
                     "config.data.synthetic.train_videos (0: those). The SFT and GRPO steps "
                     "search it.")
flags.DEFINE_bool("breakdown", True, "Also print what each step's kernels are (from the HLO).")
flags.DEFINE_integer("profile_steps", 2, "Steps run under jax.profiler after the timed ones, "
                     "for the time per kind of kernel (0: none).")
FLAGS = flags.FLAGS


# ----------------------------------------------------------------------- HLO accounting

_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "compare",
                "select", "and", "or", "xor", "not", "negate", "abs", "sign", "floor", "ceil",
                "round-nearest-even", "round-nearest-afz", "remainder", "clamp", "convert",
                "shift-left", "shift-right-logical", "shift-right-arithmetic", "is-finite",
                "popcnt", "real", "imag"}
# Instructions that launch no work of their own.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "opt-barrier", "partition-id", "replica-id", "iota"}
_KINDS = ("dot", "conv", "gather", "scatter", "sort/top-k", "reduce", "elementwise",
          "copy/layout", "callback", "control")


def _shape_dims(shape: str) -> list[list[int]]:
  """'f32[4,8]{1,0}' -> [[4, 8]]; a tuple shape -> one list per element."""
  return [[int(d) for d in dims.split(",") if d] for dims in re.findall(r"\w+\[([\d,]*)\]",
                                                                         shape)]


def _elements(shape: str) -> int:
  return sum(math.prod(d) for d in _shape_dims(shape))


def _split_shape(rest: str) -> tuple[str, str]:
  """'(f32[2], s32[]) while(...)...' -> the shape and what follows it."""
  if rest.startswith("("):
    depth = 0
    for i, c in enumerate(rest):
      depth += c == "("
      depth -= c == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  shape, _, after = rest.partition(" ")
  return shape, after


def _parse(text: str) -> tuple[dict, str]:
  """Optimized HLO text -> ({computation: [instruction dicts]}, entry name)."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    head = re.match(r"^(ENTRY )?%?([\w.\-]+) \(.*\{$", line)
    if head:
      current = comps.setdefault(head.group(2), [])
      entry = head.group(2) if head.group(1) else entry
      continue
    m = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$", line)
    if current is None or not m:
      continue
    shape, after = _split_shape(m.group(2))
    op = re.match(r"([\w\-]+)\((.*)$", after)
    if not op:
      continue
    current.append({"name": m.group(1), "shape": shape, "op": op.group(1), "line": op.group(2)})
  return comps, entry


def _called(line: str, key: str) -> list[str]:
  m = re.search(key + r"=\{?([%\w.\-, ]+)\}?", line)
  return [c.strip().lstrip("%") for c in m.group(1).split(",")] if m else []


def _describe(i: dict, ops=frozenset()) -> str:
  """A kernel's output shape, opcode, the attributes that say what it computes and, for a
  fusion, the operations in it."""
  keep = re.findall(r"(?:window|dim_labels|feature_group_count|batch_group_count|"
                    r"lhs_contracting_dims|rhs_contracting_dims|lhs_batch_dims|"
                    r"custom_call_target|kind)=(?:\{[^}]*\}|[^,\s]*)", i["line"])
  inside = sorted(ops - _FREE - {"fusion", "bitcast", "reshape", "broadcast"})
  return " ".join([re.sub(r"\{[\d,]*\}$", "", i["shape"]), i["op"]] + keep +
                  ([f"[{', '.join(inside[:6])}{', ...' if len(inside) > 6 else ''}]"]
                   if i["op"] == "fusion" else []))


def hlo_costs(text: str) -> dict:
  """FLOPs of an optimized HLO module, with and without while loops' known trip counts, and
  its kernels (the instructions that launch work) by kind: {'flops', 'flops_once',
  'kernels': {kind: count per call}, 'kind_flops': {kind: flops}, 'dots': [flops of each dot
  kernel, repeated per trip], 'loops': [trip counts], 'ops': {kernel: (kind, flops per
  call, what it is)}}. Mirrors XLA's HloCostAnalysis for dots, convolutions, elementwise ops
  and reductions (1 flop per element; transcendentals not counted)."""
  comps, entry = _parse(text)
  shapes = {c: {i["name"]: i["shape"] for i in ins} for c, ins in comps.items()}

  @functools.lru_cache(maxsize=None)
  def inner(comp: str) -> tuple[float, frozenset]:
    """FLOPs of a fused (or applied) computation, once, and the opcodes in it."""
    total, ops = 0.0, set()
    for i in comps.get(comp, []):
      total += own_flops(comp, i)
      ops.add(i["op"])
      for c in _called(i["line"], "calls"):
        f, o = inner(c)
        total += f
        ops |= o
    return total, frozenset(ops)

  def own_flops(comp: str, i: dict) -> float:
    op = i["op"]
    if op == "dot":
      lhs = re.match(r"\s*%?([\w.\-]+)", i["line"]).group(1)
      dims = _shape_dims(shapes[comp].get(lhs, ""))
      contract = [int(d) for d in _called(i["line"], "lhs_contracting_dims") if d]
      k = math.prod(dims[0][d] for d in contract) if dims else 1
      return 2.0 * _elements(i["shape"]) * k
    if op == "convolution":
      # 2 x outputs x the kernel's taps per output (its size over its output features).
      rhs = re.findall(r"%([\w.\-]+)", i["line"].split(")")[0])[1]
      dims = _shape_dims(shapes[comp].get(rhs, ""))
      labels = re.search(r"dim_labels=\w+_(\w+)->", i["line"])
      if not dims or not labels:
        return 0.0
      return 2.0 * _elements(i["shape"]) * math.prod(dims[0]) / dims[0][labels.group(1).index("o")]
    if op in _ELEMENTWISE:
      return float(_elements(i["shape"]))
    if op == "reduce":
      operand = re.match(r"\s*%?([\w.\-]+)", i["line"]).group(1)
      return float(_elements(shapes[comp].get(operand, "")))
    return 0.0

  def kind_of(i: dict, ops: frozenset) -> str:
    op = i["op"]
    if op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', i["line"])
      target = target.group(1).lower() if target else ""
      if "callback" in target:
        return "callback"
      return "sort/top-k" if "topk" in target or "top_k" in target else "dot" if (
          "matmul" in target or "dot" in target) else "elementwise"
    for kind, members in (("dot", {"dot"}), ("conv", {"convolution"}),
                          ("sort/top-k", {"sort", "topk"}),
                          ("gather", {"gather", "dynamic-slice"}),
                          ("scatter", {"scatter", "dynamic-update-slice"}),
                          ("reduce", {"reduce", "reduce-window"})):
      if ops & members:
        return kind
    if ops <= {"copy", "transpose", "broadcast", "reshape", "concatenate", "slice", "pad",
               "bitcast", "parameter", "reverse"}:
      return "copy/layout"
    return "elementwise"

  result = {"kernels": collections.Counter(), "kind_flops": collections.Counter(),
            "dots": [], "loops": [], "ops": {}}

  def walk(comp: str, times: int) -> tuple[float, float]:
    """(FLOPs with trip counts, FLOPs once) of a computation that runs as kernels."""
    full = once = 0.0
    for i in comps.get(comp, []):
      op = i["op"]
      if op in _FREE:
        continue
      if op == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', i["line"])
        trips = int(trips.group(1)) if trips else 1
        result["loops"].append(trips)
        f = o = 0.0
        for c in _called(i["line"], "body") + _called(i["line"], "condition"):
          cf, co = walk(c, times * trips)
          f, o = f + cf, o + co
        full, once = full + trips * f, once + o
        result["kernels"]["control"] += times
        result["ops"][i["name"]] = ("control", 0.0, op)
        continue
      if op in ("conditional", "call"):
        branches = _called(i["line"], "branch_computations") + _called(i["line"], "to_apply")
        costs = [walk(c, times) for c in branches] or [(0.0, 0.0)]
        full += max(c[0] for c in costs)
        once += max(c[1] for c in costs)
        result["kernels"]["control"] += times
        result["ops"][i["name"]] = ("control", 0.0, op)
        continue
      f, ops = own_flops(comp, i), {op}
      for c in _called(i["line"], "calls"):
        cf, co = inner(c)
        f, ops = f + cf, ops | co
      kind = kind_of(i, frozenset(ops))
      result["kernels"][kind] += times
      result["ops"][i["name"]] = (kind, f * times, _describe(i, frozenset(ops)))
      result["kind_flops"][kind] += f * times
      if kind == "dot":
        result["dots"].extend([f] * times)
      full, once = full + f, once + f
    return full, once

  result["flops"], result["flops_once"] = walk(entry, 1)
  return result


# ----------------------------------------------------------------------- measuring

def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def lower(step_fn, state, batch, rng):
  """Lowers a stage's jitted step. GRPO's is the jitted step with its corpus bound as a keyword
  (an argument, so that it keeps its sharding), which is lowered with it."""
  if isinstance(step_fn, functools.partial):
    return step_fn.func.lower(*step_fn.args, state, batch, rng, **step_fn.keywords)
  return step_fn.lower(state, batch, rng)


def call(compiled, step_fn, state, batch, rng):
  kwargs = step_fn.keywords if isinstance(step_fn, functools.partial) else {}
  return compiled(*getattr(step_fn, "args", ()), state, batch, rng, **kwargs)


def time_step(step_fn, state, batch, steps: int, warmup: int):
  """Compiles the step and times it: (compiled, seconds per step, final state)."""
  batch = jax.device_put(batch)
  rngs = [jax.random.PRNGKey(i) for i in range(warmup + steps)]
  start = time.perf_counter()
  compiled = lower(step_fn, state, batch, rngs[0]).compile()
  logging.info("compiled in %.1fs", time.perf_counter() - start)
  for rng in rngs[:warmup]:
    state, metrics = call(compiled, step_fn, state, batch, rng)
  jax.block_until_ready((state, metrics) if warmup else state)
  start = time.perf_counter()
  for rng in rngs[warmup:]:
    # Each step consumes the previous state (donated), as in training.
    state, metrics = call(compiled, step_fn, state, batch, rng)
  jax.block_until_ready((state, metrics))
  return compiled, (time.perf_counter() - start) / steps, state


def matmul_rate(n: int, calls: int = 10) -> float:
  """FLOP/s of a jitted float32 [n, n] x [n, n] matmul (best of three timings)."""
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), jnp.float32) for i in (0, 1))
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  best = math.inf
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready([f(a, b) for _ in range(calls)])
    best = min(best, (time.perf_counter() - start) / calls)
  return 2.0 * n ** 3 / best


def profile_kernels(compiled, step_fn, state, batch, steps: int):
  """Runs `steps` more steps under jax.profiler and sums the duration of each of this module's
  kernels (XLA's per-kernel trace events): ({kernel: seconds per step}, final state). Empty
  when the backend's trace has no such events or the profiler fails."""
  module = re.match(r"HloModule ([\w.\-]+)", compiled.as_text()).group(1)
  batch = jax.device_put(batch)
  directory = tempfile.mkdtemp(prefix="step_efficiency_")
  seconds = collections.Counter()
  try:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for i in range(steps):
        state, metrics = call(compiled, step_fn, state, batch, jax.random.PRNGKey(10_000 + i))
      jax.block_until_ready((state, metrics))
    found = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(found[0]) as f:
      trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    for e in events:
      args = e.get("args") or {}
      if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
        seconds[args["hlo_op"]] += e["dur"] * 1e-6 / steps
  except Exception as e:   # pylint: disable=broad-except (no profile: the table stands)
    logging.warning("no kernel profile (%s: %s)", type(e).__name__, e)
  finally:
    shutil.rmtree(directory, ignore_errors=True)
  return seconds, state


# ----------------------------------------------------------------------- the stages' steps

def open_context(config, train_videos: int) -> stages.Context:
  """A run's context over a synthetic train split generated in memory (no workdir)."""
  if config.data.source != "synthetic":
    raise app.UsageError("step_efficiency generates its train split: data.source must be "
                         f"'synthetic', not {config.data.source!r}")
  tokenizer = towers.tokenizer_for(config) or tokenizer_lib.WordTokenizer(
      synthetic.vocabulary(config.data.synthetic))
  n = min(train_videos or math.inf, config.data.synthetic.train_videos)
  start = time.perf_counter()
  split = store.synthetic_pool(config.data, tokenizer, split=config.data.train_split,
                               num_videos=n, first_family=0)
  logging.info("train split: %d videos, %d queries in %.0fs", split.num_videos,
               split.num_queries, time.perf_counter() - start)
  engine = towers.build_engine(config, len(tokenizer))
  # A temporary workdir: a frozen text tower's query cache is written there (query_cache.py).
  workdir = tempfile.mkdtemp(prefix="step_efficiency_run_")
  return stages.Context(config, workdir, tokenizer, {config.data.train_split: split}, engine)


def stage_loop(ctx, name: str):
  """The loop stage `name` trains with; upstream parameters come from ctx.params (the timed
  states of the stages before it) or are fresh."""
  config = ctx.config
  if name != "engine" and "engine" not in ctx.params:
    # On the host, as a restored engine is: the agent's word table starts as a copy of the
    # engine's (init_agent), and a device array there would be the same buffer, deleted with
    # the first donated agent state.
    ctx.params["engine"] = jax.device_get(towers.init_engine(ctx.engine, config,
                                                             jax.random.PRNGKey(config.seed)))
  if name == "grpo" and "sft" not in ctx.params:
    ctx.params["sft"] = jax.device_get(
        registry.STAGES.get("sft").fresh_state(ctx, ctx.engine_params).params)
  stage = registry.STAGES.get(name if name != "engine_text" else "engine", "stage")
  if name == "engine_text":
    params = ctx.engine_params
    return stage.loop(ctx, text_only=True, video_params=params["video"],
                      text_params=params["text"])
  return stage.loop(ctx)


def measure(ctx, name: str, steps: int, warmup: int, profile_steps: int) -> dict:
  loop = stage_loop(ctx, name)
  state0 = loop.initial_state()
  batch = loop.batch_fn(0, state0)
  compiled, seconds, state = time_step(loop.step_fn, state0, batch, steps, warmup)
  kernel_seconds = {}
  if profile_steps:
    kernel_seconds, state = profile_kernels(compiled, loop.step_fn, state, batch, profile_steps)
  params = jax.device_get(state.params)
  if name == "engine":
    ctx.params["engine"] = params
  elif name == "engine_text":
    ctx.params["engine"] = dict(ctx.engine_params, text=params["text"])
  elif name == "sft":
    ctx.params["sft"] = params
  hlo = hlo_costs(compiled.as_text())
  xla = cost_flops(compiled)
  # XLA's count with the while bodies' repeats added.
  flops = xla + hlo["flops"] - hlo["flops_once"]
  return {"stage": name, "flops": flops, "xla_flops": xla, "hlo": hlo, "seconds": seconds,
          "kernel_seconds": kernel_seconds}


def breakdown(r: dict) -> str:
  """What the step's kernels are and, when profiled, where its time goes."""
  hlo, flops = r["hlo"], max(r["hlo"]["flops"], 1.0)
  kernels = sum(hlo["kernels"].values())
  dots = np.array(hlo["dots"]) if hlo["dots"] else np.zeros(1)
  small = dots < 1e7
  lines = [f"{r['stage']}: {kernels} kernels/step, {1e6 * r['seconds'] / max(kernels, 1):.0f} "
           f"us each on average; dot kernels: median {np.median(dots) / 1e6:.2f} MFLOP, "
           f"largest {dots.max() / 1e6:.1f}, {int(small.sum())} under 10 MFLOP "
           f"({100 * dots[small].sum() / max(dots.sum(), 1):.0f}% of the dot FLOPs); while "
           f"loops' trip counts {sorted(collections.Counter(hlo['loops']).items()) or 'none'}; "
           f"FLOPs with bodies once {hlo['flops_once'] / 1e9:.3f} G (XLA: "
           f"{r['xla_flops'] / 1e9:.3f} G)"]
  spent = collections.Counter()
  for op, sec in r["kernel_seconds"].items():
    spent[hlo["ops"].get(op, ("other",))[0]] += sec
  spent.pop("control", None)      # a loop's time is its body's kernels'
  total = sum(spent.values())
  if total:
    lines.append(f"  profiled kernel time {1e3 * total:.0f} ms/step (wall {1e3 * r['seconds']:.0f}"
                 " ms); by kind: kernels, share of FLOPs, share of kernel time, GFLOP/s:")
  else:
    lines.append("  by kind: kernels, share of FLOPs:")
  for kind in _KINDS + ("other",):
    if kind == "control" or not hlo["kernels"][kind] and not spent[kind]:
      continue
    share = 100 * hlo["kind_flops"][kind] / flops
    line = f"    {kind:12s} {hlo['kernels'][kind]:6d} {share:5.1f}%"
    if total:
      rate = hlo["kind_flops"][kind] / spent[kind] / 1e9 if spent[kind] else 0.0
      line += f" {100 * spent[kind] / total:5.1f}% {rate:8.1f}"
    lines.append(line)
  if total:
    top = sorted(((op, sec) for op, sec in r["kernel_seconds"].items()
                  if hlo["ops"].get(op, ("other",))[0] != "control"), key=lambda kv: -kv[1])[:6]
    lines.append("  slowest kernels:")
    for op, sec in top:
      kind, f, what = hlo["ops"].get(op, ("other", 0.0, ""))
      lines.append(f"    {op} ({kind}) {1e3 * sec:.1f} ms/step, {f / sec / 1e9:.1f} GFLOP/s: "
                   f"{what}")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  unknown = [s for s in FLAGS.stages if s not in ("engine", "engine_text", "sft", "sft_hqr",
                                                  "grpo")]
  if unknown:
    raise app.UsageError(f"--stages: unknown {unknown}")
  if "engine_text" in FLAGS.stages and not config.engine.train.text_only_steps:
    raise app.UsageError("--stages=engine_text: this config has no text-only engine phase "
                         "(engine.train.text_only_steps=0)")
  ctx = open_context(config, FLAGS.train_videos)
  results = []
  # The matmul is timed right before and after each stage's steps: on a shared machine the
  # rate the chip gives this process drifts, and each fraction uses the rate of its time.
  rates = [matmul_rate(FLAGS.matmul_n)]
  for name in FLAGS.stages:
    results.append(measure(ctx, name, FLAGS.steps, FLAGS.warmup, FLAGS.profile_steps))
    rates.append(matmul_rate(FLAGS.matmul_n))
    results[-1]["matmul"] = (rates[-2] + rates[-1]) / 2
    logging.info("%s: %.1f ms/step", name, 1e3 * results[-1]["seconds"])

  split = ctx.splits[config.data.train_split]
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}); "
        f"train split {split.num_videos} videos; {FLAGS.steps} timed steps after "
        f"{FLAGS.warmup}; matmul [{FLAGS.matmul_n}]^2 float32 (2n^3 FLOPs), GFLOP/s before "
        f"and after each stage: {', '.join(f'{r / 1e9:.1f}' for r in rates)}")
  print("| stage | GFLOP/step | ms/step | GFLOP/s | matmul GFLOP/s | fraction of matmul |")
  print("|---|---|---|---|---|---|")
  for r in results:
    rate = r["flops"] / r["seconds"]
    print(f"| {r['stage']} | {r['flops'] / 1e9:.3f} | {1e3 * r['seconds']:.1f} | "
          f"{rate / 1e9:.1f} | {r['matmul'] / 1e9:.1f} | {100 * rate / r['matmul']:.1f}% |")
  if FLAGS.breakdown:
    print()
    for r in results:
      print(breakdown(r))


if __name__ == "__main__":
  app.run(main)
