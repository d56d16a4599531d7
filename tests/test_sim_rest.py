"""The phases at rest (raft/sim/rest.py): once faults stop and the cluster settles, a server
that does not do what users and operators rely on on a perfect network is reported, by the
default portfolio within a few schedules (every fourth is fair, and only fair ones rest)."""

from __future__ import annotations

from raft.core.messages import AppendEntries, ChangeMembership, InstallSnapshot, TransferLeadership
from raft.core.server import RaftServer, Ready
from raft.core.state import Progress, Role
from raft.sim.runner import RunOptions, explore
from raft.sim.schedule import SimSetup


class IgnoresTransfers(RaftServer):
    def on_transfer_leadership(self, m: TransferLeadership, now: int) -> None:
        return


class IgnoresMembershipChanges(RaftServer):
    def on_change_membership(self, m: ChangeMembership) -> None:
        return


class NeverQuiesces(RaftServer):
    def settled(self) -> bool:
        return False


class HeartbeatsLate(RaftServer):
    """Arms its heartbeat an interval later than the follower that falls due first."""

    def rearm_heartbeat(self, now: int) -> None:
        super().rearm_heartbeat(now)
        self.state.heartbeat_deadline += self.config.heartbeat_interval


def _violated(factory: str, iterations: int = 40) -> str | None:
    setup = SimSetup(target=f"{__name__}:{factory}")
    failure = explore(RunOptions(setup, seed=0, iterations=iterations)).failure
    return failure.violation.property if failure else None


def test_a_leader_that_ignores_a_transfer_request_at_rest_is_reported() -> None:
    assert _violated("IgnoresTransfers") == "leadership-transfer"


def test_a_leader_that_ignores_a_membership_change_at_rest_is_reported() -> None:
    assert _violated("IgnoresMembershipChanges") == "membership-change"


def test_a_leader_that_never_quiesces_when_idle_is_reported() -> None:
    assert _violated("NeverQuiesces") == "idle"


def test_a_leader_that_heartbeats_later_than_the_interval_is_reported() -> None:
    assert _violated("HeartbeatsLate") == "heartbeats"


class CandidateHearingTheLeaderStaysCandidate(RaftServer):
    """Follows the leader it hears from, but keeps the candidate role (§5.2 says step down)."""

    def hear_from_leader(self, m: AppendEntries | InstallSnapshot, now: int) -> None:
        role = self.state.role
        super().hear_from_leader(m, now)
        if role is Role.CANDIDATE:
            self.state.role = role


def test_a_candidate_that_keeps_its_role_under_a_leader_is_reported() -> None:
    assert _violated("CandidateHearingTheLeaderStaysCandidate", iterations=100) == "followers"


class KeepsTimersFromAClockAhead(RaftServer):
    """Never pulls back deadlines stored by an instance whose clock ran ahead."""

    def clamp_timers(self, now: int) -> None:
        if self.state.election_deadline == 0:
            self.reset_election_timer(now)


def test_a_leader_silenced_by_its_clock_jumping_back_is_reported() -> None:
    assert _violated("KeepsTimersFromAClockAhead") == "clock-jump"


class SendsSnapshotChunksTwice(RaftServer):
    """Sends every snapshot chunk twice (a wasteful resend rule)."""

    def send_snapshot_chunk(self, peer: str, p: Progress) -> None:
        super().send_snapshot_chunk(peer, p)
        if self._out and isinstance(self._out[-1].message, InstallSnapshot):
            self._out.append(self._out[-1])


def test_a_leader_that_sends_a_lagging_follower_each_snapshot_chunk_twice_is_reported() -> None:
    assert _violated("SendsSnapshotChunksTwice") == "catch-up"


class AnswersReadsAgain(RaftServer):
    """Hands every confirmed read to the host again on every later `ready`."""

    def ready(self) -> Ready:
        answered = list(self._confirmed)
        out = super().ready()
        self._confirmed = answered + self._confirmed
        return out


def test_a_leader_that_answers_a_read_more_than_once_is_reported() -> None:
    assert _violated("AnswersReadsAgain") == "cost"
