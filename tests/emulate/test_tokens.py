"""The emulated model's token ids: deterministic, valid, never EOS unless the workload asks for an end."""

import pytest

from adrenaline_sgl.emulate import tokens

VOCAB = 49152


def test_same_request_and_position_give_the_same_token():
    key = tokens.request_key("rid-1", 12345)
    assert [tokens.token_id(key, i, VOCAB) for i in range(1, 50)] == [tokens.token_id(key, i, VOCAB)
                                                                       for i in range(1, 50)]


def test_tokens_are_ordinary_ids_and_vary_with_position_and_request():
    a = [tokens.token_id(tokens.request_key("a", None), i, VOCAB) for i in range(1, 200)]
    b = [tokens.token_id(tokens.request_key("b", None), i, VOCAB) for i in range(1, 200)]
    assert all(tokens.FIRST_ID <= t < VOCAB for t in a + b)
    assert len(set(a)) > 150  # not a constant stream
    assert a != b


def test_the_bootstrap_room_is_the_key_so_prefill_and_decode_agree():
    # prefill and decode give a request different rids, the same bootstrap room
    assert tokens.request_key("prefill-rid", 7) == tokens.request_key("decode-rid", 7)
    assert tokens.request_key("x", None) != tokens.request_key("y", None)


def test_eos_only_at_the_requested_length():
    key = tokens.request_key("r", 1)
    seq = [tokens.next_token(key, i, VOCAB, eos_id=2, stop_at=5) for i in range(1, 6)]
    assert seq[:4] == [tokens.token_id(key, i, VOCAB) for i in range(1, 5)]
    assert seq[4] == 2
    assert all(tokens.next_token(key, i, VOCAB, eos_id=2, stop_at=None) != 2 for i in range(1, 300))


def test_requested_length_is_validated():
    assert tokens.stop_at_of({tokens.OUTPUT_LEN_KEY: 3}) == 3
    assert tokens.stop_at_of(None) is None and tokens.stop_at_of({}) is None
    for bad in (0, -1, "3", 2.5, True):
        with pytest.raises(ValueError, match=tokens.OUTPUT_LEN_KEY):
            tokens.stop_at_of({tokens.OUTPUT_LEN_KEY: bad})


def test_index_is_one_based():
    with pytest.raises(ValueError, match="1-based"):
        tokens.token_id(1, 0, VOCAB)
