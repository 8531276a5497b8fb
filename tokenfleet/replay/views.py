"""What balancers, autoscalers and the timeline read of a replica in the middle of a run.

A run's steps are not listed, so what a run has done by a given time is computed from its
decode piece: the steps that have ended, the KV blocks and tokens left then. `Replica` has
these as methods (this class holds no state of its own).
"""

from __future__ import annotations

INF = float("inf")
IDLE, STEP, RUN = 0, 1, 2  # Replica.state: idle, one step in flight, a run of decode steps


class ReplicaViews:
    """Read-only views of a `Replica`'s run (mixed into it)."""

    __slots__ = ()

    def steps_done_at(self, now: float) -> int:
        """Steps of the current run that ended strictly before `now` (0 outside a run).

        A balancer asks every replica at every arrival; the answer only changes at a step end,
        so the piece's step in progress is kept with the times it holds for. The piece is
        checked too: a gateway timer can route a request at the very instant a run ends and the
        next piece starts, inside the old window."""
        if self.state != RUN:
            return 0
        piece = self.piece
        if self.view_piece == piece.number and self.view_lo < now <= self.view_hi:
            s = self.view_s
        else:
            s, self.view_hi = piece.first_end_at(now)
            self.view_lo = piece.end_of(s - 1) if s > piece.s0 else -INF
            self.view_s = s
            self.view_piece = piece.number
        done = s - self.run_s0
        n = self.run_n
        return done if 0 <= done <= n else (0 if done < 0 else n)

    def kv_used_at(self, now: float) -> float:
        """Fraction of the KV cache in use at `now`."""
        kv = self.kv
        return kv.used_blocks(self.step_no + self.steps_done_at(now)) / kv.capacity_blocks

    def tokens_left_at(self, now: float) -> int:
        return self.tokens_left - self.n_gen * self.steps_done_at(now)

    def steps_before(self, t: float) -> int:
        """Steps of the current run that start before `t` (the timeline splits runs there)."""
        return self.piece.first_end_at(t)[0] - self.run_s0 + 1

    def kv_blocks_after(self, steps: int) -> int:
        """Blocks in use once `steps` steps of the current run have taken theirs."""
        return self.kv.used_blocks(self.run_s0 + steps)
