"""Word-level tokenizer for the engine's from-scratch text tower and the agent."""

from __future__ import annotations

import collections
import re

import numpy as np

PAD, UNK = 0, 1
SPECIALS = ("[PAD]", "[UNK]")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def split_words(text: str) -> list[str]:
  return _WORD.findall(text.lower())


class WordTokenizer:
  """Maps lower-cased words to ids; 0 is padding, 1 is unknown."""

  def __init__(self, words):
    words = [w for w in words if w not in SPECIALS]
    if len(set(words)) != len(words):
      raise ValueError("vocabulary has repeated words")
    self.vocab = list(SPECIALS) + words
    self.index = {w: i for i, w in enumerate(self.vocab)}

  @classmethod
  def build(cls, texts, min_count: int = 1) -> "WordTokenizer":
    counts = collections.Counter(w for t in texts for w in split_words(t))
    return cls(sorted(w for w, c in counts.items() if c >= min_count))

  @classmethod
  def load(cls, path: str) -> "WordTokenizer":
    with open(path, encoding="utf-8") as f:
      return cls([line.strip() for line in f if line.strip()])

  def save(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n".join(self.vocab) + "\n")

  def __len__(self) -> int:
    return len(self.vocab)

  def encode(self, texts, max_len: int, *, fine_of=None):
    """Returns (ids [N, max_len] int32, fine [N, max_len] bool, number of cut texts).

    fine_of: optional list of coarse captions; a token is 'fine' when its word does not occur
    in the text's coarse caption (the part of a fig_desc that a cog_desc lacks).
    """
    ids = np.zeros((len(texts), max_len), np.int32)
    fine = np.zeros((len(texts), max_len), bool)
    cut = 0
    for i, text in enumerate(texts):
      words = split_words(text)
      if len(words) > max_len:
        cut += 1
        words = words[:max_len]
      ids[i, :len(words)] = [self.index.get(w, UNK) for w in words]
      if fine_of is not None:
        coarse = set(split_words(fine_of[i]))
        fine[i, :len(words)] = [w not in coarse for w in words]
    return ids, fine, cut
