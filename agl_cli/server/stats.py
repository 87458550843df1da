"""What the daemon counts since it started, for `agl status` and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from agl_cli.server.rates import RateWindow
from agl_cli.store import ReportOutcome


@dataclass
class Stats:
    """Counts since start-up, for status and metrics."""

    started: float  # the store's clock
    claims: int = 0
    reclaims: int = 0  # of the claims, tasks handed out again (the store API's dequeues too)
    reports: dict[ReportOutcome, int] = field(default_factory=lambda: dict.fromkeys(ReportOutcome, 0))
    results: int = 0  # stored: reports (first results, unsolicited ones) and store-API successes
    claim_rate: RateWindow = field(default_factory=RateWindow)
    rollout_rate: RateWindow = field(default_factory=RateWindow)
    pruned: int = 0  # results deleted past the retention setting
    in_flight: int = 0  # requests being served now
    turned_away: int = 0  # answered 503 because `in_flight` was at the limit
