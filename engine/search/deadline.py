"""No new trial once the time left cannot buy its first result.

A trial started a few seconds before the study's time budget ends pays its start-up (model
build, cuDNN plans, graph capture), reports nothing, and is then stopped, which itself takes
time past the budget. The search therefore stops proposing trials when the time left is
shorter than the quickest first result seen so far (with ``race: folds``, a trial's first fold).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Deadline:
    """When Tune's budget ends (``time.time()`` seconds; None: no budget) and how long trials
    took to their first result."""

    ends_at: float | None = None
    first_result_s: dict[str, float] = field(default_factory=dict)

    def start(self, budget_s: float | None) -> None:
        """Tune's budget starts now (each run or resume of the study sets its own)."""
        self.ends_at = None if budget_s is None else time.time() + budget_s
        self.first_result_s.clear()

    def record(self, trial_id: str, result: dict) -> None:
        """Keep a trial's first ``time_total_s`` (Tune's seconds since the trial started)."""
        if trial_id not in self.first_result_s and "time_total_s" in result:
            self.first_result_s[trial_id] = float(result["time_total_s"])

    def too_late(self) -> bool:
        """True when a new trial would not reach its first result before the budget ends."""
        if self.ends_at is None or not self.first_result_s:
            return False
        return self.ends_at - time.time() < min(self.first_result_s.values())


# The driver's one deadline: set by run_search before Tune starts, read by the searcher (not
# pickled with it, so a resumed study counts from its own budget).
DEADLINE = Deadline()
