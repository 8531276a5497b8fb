"""The KV cache's phase histogram against a sequence-by-sequence count."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenfleet.replay.kvcache import KVCache


def brute_blocks(offsets: list[int], step_no: int, block_size: int) -> int:
    return sum(-(-(a + step_no) // block_size) for a in offsets)


@settings(max_examples=300, deadline=None)
@given(
    block_size=st.sampled_from([1, 4, 16, 32]),
    start=st.integers(0, 500),
    cached=st.lists(st.integers(1, 3000), max_size=30),
    later=st.integers(0, 400),
)
def test_blocks_and_demand_match_a_count_per_sequence(block_size, start, cached, later):
    kv = KVCache(10**9, block_size)
    offsets = [c - start for c in cached]  # sequences holding `c` tokens at step `start`
    for a in offsets:
        kv.add_decoder(a)
    s = start + later
    assert kv.decoder_blocks(s) == brute_blocks(offsets, s, block_size)
    assert kv.decode_demand(s) == brute_blocks(offsets, s + 1, block_size) - brute_blocks(
        offsets, s, block_size
    )
    if offsets:
        kv.remove_decoder(offsets[0])
        assert kv.decoder_blocks(s) == brute_blocks(offsets[1:], s, block_size)


@settings(max_examples=200, deadline=None)
@given(
    block_size=st.sampled_from([4, 16]),
    cached=st.lists(st.integers(1, 500), min_size=1, max_size=20),
    spare=st.integers(0, 200),
    other=st.integers(0, 50),
    max_steps=st.integers(1, 300),
)
def test_steps_until_full_is_the_longest_run_that_fits(block_size, cached, spare, other, max_steps):
    held = brute_blocks(cached, 0, block_size)
    kv = KVCache(held + other + spare, block_size)
    kv.other_blocks = other
    for c in cached:
        kv.add_decoder(c)
    n = kv.steps_until_full(0, max_steps)
    fits = [k for k in range(max_steps + 1) if brute_blocks(cached, k, block_size) <= held + spare]
    assert n == max(fits)


@settings(max_examples=300, deadline=None)
@given(
    block_size=st.sampled_from([1, 4, 16]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("step"), st.sampled_from([0, 1, 1, 1, 2, 7])),
            st.tuples(st.just("add"), st.integers(1, 400)),
            st.just(("remove", 0)),
        ),
        max_size=60,
    ),
)
def test_blocks_stay_exact_as_steps_advance_and_sequences_come_and_go(block_size, ops):
    """The replica asks step after step (the answer for step s + 1 is built from the one for
    s) while sequences join and leave in between: every answer equals the per-sequence count."""
    kv = KVCache(10**9, block_size)
    offsets: list[int] = []
    s = 0
    for op, value in ops:
        if op == "step":
            s += value
        elif op == "add":
            offsets.append(value - s)  # joins holding `value` tokens at step s
            kv.add_decoder(offsets[-1])
        elif offsets:
            kv.remove_decoder(offsets.pop(0))
        assert kv.decoder_blocks(s) == brute_blocks(offsets, s, block_size)
        # The cheap bound holds once the step's new blocks are given (held at step s + 1).
        assert kv.decoder_blocks_bound(s) >= brute_blocks(offsets, s + 1, block_size)
