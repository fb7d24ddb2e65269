"""CharTokenizer: ids, round trips, EOS/pad handling, errors that name the problem."""

import pytest

from llm_reference.tokenizer import ALPHABET, EOS_ID, PAD_ID, CharTokenizer


def test_ids_are_pad_eos_then_alphabet_order():
    tok = CharTokenizer("ab")
    assert (tok.pad_id, tok.eos_id) == (PAD_ID, EOS_ID) == (0, 1)
    assert tok.encode("ab") == [2, 3]
    assert tok.encode("ba") == [3, 2]
    assert tok.vocab_size == 4


def test_round_trip_over_the_whole_alphabet():
    tok = CharTokenizer()
    assert tok.decode(tok.encode(ALPHABET)) == ALPHABET
    assert tok.vocab_size == len(ALPHABET) + 2
    assert tok.encode_prompt("N357=1:") == tok.encode("N357=1:")


def test_decode_stops_at_eos_and_skips_padding():
    tok = CharTokenizer()
    ids = [PAD_ID, PAD_ID] + tok.encode("12") + [EOS_ID] + tok.encode("34")
    assert tok.decode(ids) == "12"


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match=r"'x'.*not in the tokenizer's alphabet"):
        CharTokenizer().encode("A1x")


def test_repeated_alphabet_characters_are_rejected():
    with pytest.raises(ValueError, match=r"repeated characters \['a'\]"):
        CharTokenizer("aba")


def test_out_of_range_id_is_rejected():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([2, 9])
