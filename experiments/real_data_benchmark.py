"""Real-benchmark numbers on this machine: the Charades-FIG TFDS build, random-access reads,
an end-to-end run over the real corpus size, and the pretrained text encoder's throughput.

The annotations are the real Charades-FIG test file (../shared/data/verified/); the video
features are generated (deterministic, `--feature_dim`-d at 1 fps, one row per second of each
video's duration), as no real features ship with the repo.

  .venv/bin/python experiments/real_data_benchmark.py --out=runs/real_bench [--skip_e2e]
      [--e2e_preset=smoke] [--e2e_override=engine.train.steps=100 ...]

Writes <out>/results.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANNOTATIONS = os.path.join(REPO, "..", "shared", "data", "verified", "charades_fig_test.jsonl")


def make_manual_dir(out: str, feature_dim: int, seed: int = 0) -> str:
  """<out>/manual: the real annotation file (linked) and generated features per video."""
  manual = os.path.join(out, "manual")
  if os.path.isdir(os.path.join(manual, "features")):
    return manual
  tmp = manual + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.join(tmp, "features"))
  os.symlink(os.path.abspath(ANNOTATIONS), os.path.join(tmp, "charades_fig_test.jsonl"))
  durations = {}
  with open(ANNOTATIONS, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      durations[row["video"]] = row["duration"]
  rng = np.random.default_rng(seed)
  for video, duration in sorted(durations.items()):
    rows = max(1, math.ceil(duration))          # 1 fps
    feats = rng.standard_normal((rows, feature_dim)).astype(np.float32)
    np.save(os.path.join(tmp, "features", video + ".npy"), feats)
  os.replace(tmp, manual)
  return manual


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bench_build(out: str, manual: str, feature_dim: int) -> dict:
  from vsr_jax import defaults
  from vsr_jax.data.tfds import source
  cfg = defaults.base_config()
  cfg.data.source, cfg.data.manual_dir, cfg.data.feature_dim = "tfds", manual, feature_dim
  data_dir = os.path.join(out, "tfds")
  shutil.rmtree(data_dir, ignore_errors=True)
  start = time.perf_counter()
  builder = source.prepare(cfg.data, data_dir)
  build_s = time.perf_counter() - start
  ds = builder.as_data_source(split="test")
  n = len(ds)
  rng = np.random.default_rng(0)
  order = rng.permutation(n)
  start = time.perf_counter()
  reads = 0
  while time.perf_counter() - start < 5.0:
    for i in order:
      ds[int(i)]
    reads += n
  read_s = time.perf_counter() - start
  start = time.perf_counter()
  _, splits = source.load_data(cfg, data_dir, ("test",))
  split_s = time.perf_counter() - start
  test = splits["test"]
  return {"build_seconds": round(build_s, 2),
          "dataset_bytes": du(os.fspath(builder.data_dir)),
          "input_feature_bytes": du(os.path.join(manual, "features")),
          "videos": n, "queries": test.num_queries, "corrections": test.corrections,
          "random_reads_per_second": round(reads / read_s, 1),
          "to_split_seconds": round(split_s, 2)}


def bench_encoder(num: int = 512, batch: int = 64) -> dict:
  from vsr_jax.engine import pretrained
  with open(ANNOTATIONS, encoding="utf-8") as f:
    texts = [json.loads(line)["fig_desc"] for line in f][:num]
  max_len = 40
  encode = pretrained.sentence_encoder("", max_len=max_len, batch=batch)
  encode(texts)                 # compile every length bucket
  start = time.perf_counter()
  encode(texts)
  seconds = time.perf_counter() - start
  return {"sentences": num, "batch": batch, "max_pieces": max_len,
          "sentences_per_second": round(num / seconds, 1)}


def bench_e2e(out: str, manual: str, feature_dim: int, preset: str, overrides: list) -> dict:
  workdir = os.path.join(out, f"e2e_{preset}")
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [sys.executable, "-m", "vsr_jax.main", f"--config=configs/charades_fig.py:{preset}",
         f"--config.data.manual_dir={manual}", f"--config.data.feature_dim={feature_dim}",
         f"--workdir={workdir}"] + [f"--config.{o}" for o in overrides]
  start = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  with open(os.path.join(out, f"e2e_{preset}.log"), "w", encoding="utf-8") as f:
    f.write(proc.stdout + proc.stderr)
  result = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
            "wall_seconds": round(seconds, 1)}
  metrics = os.path.join(workdir, "metrics.json")
  if proc.returncode == 0 and os.path.isfile(metrics):
    result["outputs"] = sorted(os.listdir(workdir))
  else:
    result["stderr_tail"] = proc.stderr[-2000:]
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.path.join(REPO, "runs", "real_bench"))
  parser.add_argument("--feature_dim", type=int, default=256)
  parser.add_argument("--skip_e2e", action="store_true")
  parser.add_argument("--skip_build", action="store_true")
  parser.add_argument("--skip_encoder", action="store_true")
  parser.add_argument("--e2e_preset", default="smoke")
  parser.add_argument("--e2e_override", nargs="*", default=[])
  args = parser.parse_args()
  if not os.path.isfile(ANNOTATIONS):
    sys.exit(f"missing {ANNOTATIONS}: the real annotation files live in ../shared/data/")
  os.makedirs(args.out, exist_ok=True)
  manual = make_manual_dir(args.out, args.feature_dim)
  results = {}
  if not args.skip_build:
    results["build"] = bench_build(args.out, manual, args.feature_dim)
  if not args.skip_encoder:
    results["encoder"] = bench_encoder()
  if not args.skip_e2e:
    results["e2e"] = bench_e2e(args.out, manual, args.feature_dim, args.e2e_preset,
                               args.e2e_override)
  path = os.path.join(args.out, f"results_{args.e2e_preset}.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=1)
  print(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
