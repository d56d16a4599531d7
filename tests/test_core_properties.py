"""Properties of the core under arbitrary delivery orders (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from raft.core.messages import AppendEntriesResponse
from tests.helpers import append, deliver, entries, server

term_steps = st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=12)


@st.composite
def leader_log_and_messages(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, int, int]]]:
    steps = draw(term_steps)
    terms: list[int] = []
    for step in steps:
        terms.append((terms[-1] if terms else 1) + step)
    windows = st.tuples(
        st.integers(0, len(terms)), st.integers(0, len(terms)), st.integers(0, len(terms))
    ).map(lambda t: (min(t[:2]), max(t[:2]), t[2]))
    return terms, draw(st.lists(windows, max_size=30))


@settings(max_examples=200, deadline=None)
@given(leader_log_and_messages())
def test_follower_log_stays_a_growing_prefix_of_the_leaders_under_any_delivery_order(
    case: tuple[list[int], list[tuple[int, int, int]]],
) -> None:
    terms, windows = case
    leader_log = entries(*terms)
    term = terms[-1]
    follower = server("s2", term=term)
    previous_length = previous_commit = highest_commit = 0
    for start, end, commit in windows:
        highest_commit = max(highest_commit, commit)
        message = append(
            term,
            "s1",
            start,
            terms[start - 1] if start else 0,
            leader_log[start:end],
            commit=commit,
        )
        (reply,) = deliver(follower, "s1", message)
        log = follower.state.log
        assert log == leader_log[: len(log)], "the follower's log is a prefix of the leader's"
        assert len(log) >= previous_length, "matching entries are never removed"
        assert previous_commit <= follower.state.commit_index <= min(len(log), highest_commit)
        assert isinstance(reply, AppendEntriesResponse)
        assert reply.success == (start <= previous_length)
        previous_length, previous_commit = len(log), follower.state.commit_index
