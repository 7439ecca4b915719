"""Tests for vsr_jax.data.tokenizer.WordTokenizer."""
import numpy as np
import pytest

from vsr_jax.data import tokenizer as T


def test_split_words():
  assert T.split_words("The man's RED-box, 2x!  ok") == ["the", "man's", "red", "box", "2x",
                                                        "ok"]
  assert T.split_words("") == []
  assert T.split_words("...!?") == []
  assert T.split_words("rock'n'roll") == ["rock'n", "roll"]


def test_vocab_and_specials():
  tok = T.WordTokenizer(["b", "a", "[PAD]", "c"])
  assert tok.vocab == ["[PAD]", "[UNK]", "b", "a", "c"]
  assert len(tok) == 5
  assert (T.PAD, T.UNK) == (0, 1)
  assert tok.index["a"] == 3
  with pytest.raises(ValueError, match="repeated"):
    T.WordTokenizer(["a", "b", "a"])


def test_encode_pad_unk_and_cut():
  tok = T.WordTokenizer(["a", "b", "c"])              # a=2, b=3, c=4
  ids, fine, cut = tok.encode(["A b", "c x a b c", "", "b b b"], 3)
  np.testing.assert_array_equal(ids, [[2, 3, 0], [4, 1, 2], [0, 0, 0], [3, 3, 3]])
  assert ids.dtype == np.int32 and fine.dtype == bool
  assert cut == 1                                     # exactly 3 words is not cut
  assert not fine.any()                               # no coarse captions given


def test_fine_mask():
  tok = T.WordTokenizer(["a", "b", "c", "red", "the"])
  texts = ["the red b in here", "a b", "c"]
  coarse = ["The B", "", "c c"]
  ids, fine, cut = tok.encode(texts, 4, fine_of=coarse)
  assert cut == 1
  # Row 0: the(coarse) red(fine) b(coarse) in(fine, unknown word) -- 'here' is cut.
  np.testing.assert_array_equal(fine, [[False, True, False, True],
                                       [True, True, False, False],
                                       [False, False, False, False]])
  np.testing.assert_array_equal(ids[0], [tok.index["the"], tok.index["red"], tok.index["b"],
                                         T.UNK])
  assert not (fine & (ids == T.PAD)).any()


def test_save_load_round_trip(tmp_path):
  tok = T.WordTokenizer.build(["Zebra and apple", "apple pie's crust"])
  path = str(tmp_path / "vocab.txt")
  tok.save(path)
  assert open(path).read().splitlines()[:2] == ["[PAD]", "[UNK]"]
  back = T.WordTokenizer.load(path)
  assert back.vocab == tok.vocab
  assert back.index == tok.index
  texts = ["apple zebra unknown", "pie's and"]
  for a, b in zip(tok.encode(texts, 5), back.encode(texts, 5)):
    np.testing.assert_array_equal(a, b)


def test_build_from_texts():
  texts = ["The cat sat", "the CAT ran", "a dog"]
  tok = T.WordTokenizer.build(texts)
  assert tok.vocab == ["[PAD]", "[UNK]", "a", "cat", "dog", "ran", "sat", "the"]
  tok2 = T.WordTokenizer.build(texts, min_count=2)
  assert tok2.vocab == ["[PAD]", "[UNK]", "cat", "the"]
  ids, _, _ = tok2.encode(["the dog"], 3)
  np.testing.assert_array_equal(ids, [[3, T.UNK, 0]])
  # A generator of texts works too (store passes one).
  assert T.WordTokenizer.build(t for t in texts).vocab == tok.vocab
