"""`tfds build` without TensorFlow: TFDS's own build command (same flags), with this
project's builders registered.

  python -m vsr_jax.data.tfds.build verified_fig/charades --manual_dir DIR --data_dir OUT
  python -m vsr_jax.data.tfds.build verified_fig --config '{"name": "charades-i3d",
      "feature_dim": 1024}' --manual_dir DIR --data_dir OUT
  python -m vsr_jax.data.tfds.build tvr --manual_dir DIR --data_dir OUT

(The `tfds` command itself imports TensorFlow at start-up in tensorflow-datasets 4.9.10, for
a subcommand this project does not use.)
"""

from __future__ import annotations

import sys

import simple_parsing
from tensorflow_datasets.scripts.cli import build as tfds_build

from vsr_jax.data.tfds import tvr, verified   # registers the builders

del tvr, verified


def main(argv: list[str] | None = None) -> None:
  args = simple_parsing.parse(tfds_build.Args, args=sys.argv[1:] if argv is None else argv)
  args.execute()


if __name__ == "__main__":
  main()
