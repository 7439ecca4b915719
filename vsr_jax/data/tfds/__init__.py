"""TFDS builders of the real VCMR benchmarks (VERIFIED FIG, TVR) and the reader that turns
them into the project's splits (data.source='tfds')."""
