"""`--strategy auto`: a race of the real candidates, decided on validation accuracy.

A linear probe on frozen features cannot see what fine-tuning would learn (mirror pairs such as
keep_left / keep_right look alike to globally pooled ImageNet features), so `auto` trains the
candidates instead and keeps the one that validates best, by successive halving (Jamieson &
Talwalkar 2016):

- rung r of R gives every live candidate the share eta**(r - R) of its *main* phase (the last
  one: fine_tune's unfrozen phase, from_scratch's only phase); earlier phases (fine_tune's head
  on cached features) run whole at the first rung, and so do main phases on cached features
  (feature_extraction, truncate: their whole schedule costs less than one unfrozen epoch);
- after each rung the better 1/eta (rounded up) go on, judged by their best validation accuracy
  so far (ties: the cheaper candidate, listed first); a candidate that finished its schedule
  early (a head on cached features) waits in later rungs at no cost;
- the last candidate standing continues to its full schedule: its weights, optimizer moments
  and learning-rate schedule carry on, nothing is trained twice.

Two rules shorten the race, each recorded with its reason: a candidate the four-case rule rules
out (from_scratch on small data whose pretrained features help) is pruned before it starts, and
a candidate that finishes its schedule with less than `margin` left to gain (validation
accuracy >= 1 - margin) ends the race at once, because no rival can then win by more than
`margin`: on data that frozen features already solve, the race costs about one frozen run.
Validation is the run's own honest split (whole sequences); test data is never seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tl_perception.train.config import STRATEGIES, FinetuneConfig

#: Each rung keeps the best 1/ETA of the candidates and gives them ETA times the budget.
ETA = 2
#: A rung gives an unfrozen main phase at least this many epochs: one epoch at the top of
#: the learning-rate schedule says too little.
MIN_RUNG_EPOCHS = 2
#: A finished leader at or above 1 - MARGIN validation accuracy ends the race.
MARGIN = 0.01

Log = Callable[[str], None]


class Trainee(Protocol):
    """What the race needs of a candidate's training (`phases.StrategyTraining`)."""

    @property
    def main_epochs(self) -> int: ...

    @property
    def main_epochs_done(self) -> int: ...

    @property
    def score(self) -> float | None: ...

    @property
    def done(self) -> bool: ...

    @property
    def cached_main_phase(self) -> bool: ...

    def advance(self, main_epochs: int | None) -> None: ...


@dataclass
class Candidate:
    """One entry of the race and what happened to it."""

    key: str
    strategy: str
    variant: Any = None  # what else defines it (the backbone at its input size), for `build`
    trainee: Trainee | None = None
    seconds: float = 0.0
    rungs: list[dict[str, Any]] = field(default_factory=list)
    status: str = "racing"  # "winner", "stopped", "pruned"
    reason: str = ""

    @property
    def val_accuracy(self) -> float | None:
        """Its best val accuracy so far (its last rung's, once released)."""
        if self.trainee is not None:
            return self.trainee.score
        return self.rungs[-1]["val_accuracy"] if self.rungs else None

    @property
    def score(self) -> float:
        value = self.val_accuracy
        return -1.0 if value is None else value

    def release(self) -> None:
        """Drop the stopped candidate's model (its rungs keep what it measured): a race of
        several large backbones must not hold every loser in memory."""
        self.trainee = None

    def record(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "strategy": self.strategy,
            "status": self.status,
            "reason": self.reason,
            "val_accuracy": self.val_accuracy,
            "epochs": self.rungs[-1]["epochs"] if self.rungs else 0,
            "seconds": round(self.seconds, 2),
            "rungs": self.rungs,
        }


def checkpoint_prefix(key: str) -> str:
    """A candidate's phase names in the run's checkpoint directory (`fine_tune.all`, ...)."""
    return key.replace("/", ".") + "."


def rung_count(candidates: int, eta: int = ETA) -> int:
    """Rungs before the final one: enough halvings to leave one candidate."""
    return math.ceil(math.log(candidates, eta) - 1e-9) if candidates > 1 else 0


def rung_epochs(fraction: float, trainee: Trainee, min_epochs: int = MIN_RUNG_EPOCHS) -> int | None:
    """Main-phase epochs a candidate trains to at a rung with this share (None: to its end)."""
    if trainee.cached_main_phase or fraction >= 1.0:
        return None
    total = trainee.main_epochs
    return min(total, max(min_epochs, math.ceil(fraction * total)))


def survivors(candidates: Sequence[Candidate], keep: int) -> list[Candidate]:
    """The `keep` best by score; ties go to the earlier (cheaper) candidate."""
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i].score, i))
    return [candidates[i] for i in sorted(order[:keep])]


@dataclass
class Race:
    """Runs the race over `candidates` (in cost order), building each trainee on first use."""

    candidates: list[Candidate]
    build: Callable[[Candidate], Trainee]
    log: Log = print
    eta: int = ETA
    margin: float = MARGIN
    clock: Callable[[], float] = time.monotonic
    rung_fractions: list[float] = field(default_factory=list)

    def run(self) -> Candidate:
        """Race to one winner, trained to its full schedule; every candidate's record filled."""
        live = [c for c in self.candidates if c.status == "racing"]
        if not live:
            raise ValueError("a race needs at least one candidate")
        rungs = rung_count(len(live), self.eta)
        self.rung_fractions = [self.eta ** (r - rungs) for r in range(rungs + 1)]
        for number, fraction in enumerate(self.rung_fractions):
            for candidate in live:
                self._train(candidate, number, fraction)
                if self._decisive(candidate):
                    return self._crown(candidate, live, self._no_room(candidate))
            if len(live) == 1:
                break
            live = self._cut(live, number)
            if len(live) == 1:
                self._train(live[0], number + 1, 1.0)
                break
        return self._crown(survivors(live, 1)[0], live, "lost the final rung")

    def _decisive(self, candidate: Candidate) -> bool:
        """Finished with less than `margin` left to gain: no rival can win by more."""
        trainee = candidate.trainee
        return trainee is not None and trainee.done and candidate.score >= 1 - self.margin

    def _no_room(self, leader: Candidate) -> str:
        return (
            f"{leader.key} finished at val accuracy {leader.score:.4f}: less than "
            f"{self.margin:g} left to gain"
        )

    def _crown(self, winner: Candidate, live: list[Candidate], why: str) -> Candidate:
        """`winner` wins; the others still racing stop (or never start) for `why`."""
        winner.status = "winner"
        for candidate in live:
            if candidate is not winner:
                self._stop(candidate, why)
        return winner

    def _stop(self, candidate: Candidate, why: str) -> None:
        candidate.status, candidate.reason = "stopped", why
        self.log(
            f"race: {candidate.key} stopped (val accuracy {_fmt(candidate.val_accuracy)}): {why}"
        )
        candidate.release()

    def _train(self, candidate: Candidate, number: int, fraction: float) -> None:
        started = self.clock()
        if candidate.trainee is None:
            candidate.trainee = self.build(candidate)
        trainee = candidate.trainee
        before = trainee.main_epochs_done
        trainee.advance(rung_epochs(fraction, trainee))
        spent = self.clock() - started
        candidate.seconds += spent
        if trainee.main_epochs_done == before and candidate.rungs:
            return  # finished before this rung: nothing trained, nothing to record
        candidate.rungs.append(
            {
                "rung": number,
                "share": fraction,
                "epochs": trainee.main_epochs_done,
                "val_accuracy": trainee.score,
                "seconds": round(spent, 2),
            }
        )
        self.log(
            f"race rung {number}: {candidate.key} val accuracy {_fmt(trainee.score)} after "
            f"{trainee.main_epochs_done}/{trainee.main_epochs} epochs ({spent:.1f} s)"
        )

    def _cut(self, live: list[Candidate], number: int) -> list[Candidate]:
        """The better 1/eta of `live` go on after rung `number`."""
        kept = survivors(live, math.ceil(len(live) / self.eta))
        why = f"not among the best {len(kept)} of {len(live)} at rung {number}"
        for candidate in live:
            if candidate not in kept:
                self._stop(candidate, why)
        return kept


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def plan_candidates(
    cfg: FinetuneConfig, prior: dict[str, Any], variants: Sequence[tuple[str, Any]] = (("", None),)
) -> list[Candidate]:
    """The four strategies of every variant (label, backbone choice), cheapest first.

    Cost order is strategy first (every frozen candidate before any unfrozen one), then the
    variants as listed. `prior` is the four-case rule's decision (`auto.decide`: data size and
    the linear probes). Random initialisation needs thousands of images per class: on small
    data whose pretrained features help at all, from_scratch cannot win (GTSRB at 100/class:
    0.26 against fine_tune's 0.94) and would cost the most of all, so it does not start.
    """
    several = len(variants) > 1
    candidates = [
        Candidate(key=f"{label}/{s}" if several else s, strategy=s, variant=variant)
        for s in STRATEGIES
        for label, variant in variants
    ]
    skill = max(prior["probe_final"]["skill"], prior["probe_cut"]["skill"])
    if not prior["large"] and skill >= cfg.transfer_threshold:
        for scratch in (c for c in candidates if c.strategy == "from_scratch"):
            scratch.status = "pruned"
            scratch.reason = (
                f"{prior['images_per_class']:.0f} images/class < {cfg.size_threshold} and "
                f"pretrained features help (probe skill {skill:.2f} >= "
                f"{cfg.transfer_threshold}): random initialisation needs thousands of images "
                "per class"
            )
    return candidates


def decision_record(
    race: Race, winner: Candidate, prior: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """What bundle.json records under "auto" (and "decision"): the winner, why, every rung."""
    raced = [c for c in race.candidates if c.status != "pruned"]
    trained = [c for c in raced if c is not winner and c.rungs]
    rivals = sorted(survivors(trained, 2), key=lambda c: -c.score)
    others = ", ".join(f"{c.key} {_fmt(c.score)}" for c in rivals)
    unstarted = len(raced) - len(trained) - 1
    pruned = len(race.candidates) - len(raced)
    reason = (
        f"{winner.key}: best val accuracy {winner.score:.4f} in a race of {len(raced)} "
        f"candidates (successive halving, eta {race.eta}); next best: {others or 'none'}"
        + (
            f"; {unstarted} not started (less than {race.margin:g} left to gain)"
            if unstarted
            else ""
        )
        + (f"; {pruned} pruned" if pruned else "")
    )
    return {
        "strategy": winner.strategy,
        "winner": winner.key,
        "reason": reason,
        "race": {
            "eta": race.eta,
            "margin": race.margin,
            "rung_shares": race.rung_fractions,
            "seconds": round(seconds, 2),
            "candidates": [c.record() for c in race.candidates],
        },
        "prior": prior,
        "images_per_class": prior["images_per_class"],
        "probe_final": prior["probe_final"],
        "probe_cut": prior["probe_cut"],
    }


def summary_lines(decision: dict[str, Any] | None) -> list[str]:
    """The race as a small markdown table (evaluate's summary, the demo report); [] without one."""
    race = (decision or {}).get("race")
    if not race:
        return []
    lines = [
        "| candidate | status | val accuracy per rung (epochs) | seconds | why |",
        "|---|---|---|---:|---|",
    ]
    for c in race["candidates"]:
        rungs = ", ".join(f"{_fmt(r['val_accuracy'])} ({r['epochs']})" for r in c["rungs"])
        lines.append(
            f"| {c['key']} | {c['status']} | {rungs or '-'} | {c['seconds']:.1f} | "
            f"{c['reason'] or '-'} |"
        )
    return lines
