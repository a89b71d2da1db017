"""Deterministic, sticky assignment of a user to an arm.

A user's place in [0, 1) is a hash of (experiment, user id): the same on every gateway replica
and after a restart, different between experiments (so two experiments do not split users the
same way). Arms take consecutive slices of [0, 1) in the order the file lists them, each as wide
as its share of the weights. Changing the weights moves only the users whose place changes
slice; adding an arm at the end takes users from the arms before it.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from itertools import accumulate

from shared.experiments import Experiment

HEADER = "X-Vidrec-Arm"  # QA override: "arm" or "experiment:arm"


class UnknownArm(ValueError):
    """The override header names an arm the active experiment does not have."""


@dataclass(frozen=True, slots=True)
class Assignment:
    experiment: str
    arm: str
    forced: bool = False  # chosen by the QA header: logged, but kept out of the arm's metrics


def place(experiment: str, user_id: str) -> float:
    """The user's place in [0, 1) for this experiment (64 bits of SHA-256)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(exp: Experiment, user_id: str) -> Assignment:
    total = sum(a.weight for a in exp.arms)
    edges = list(accumulate(a.weight / total for a in exp.arms))
    i = min(bisect.bisect_right(edges, place(exp.name, user_id)), len(exp.arms) - 1)
    return Assignment(exp.name, exp.arms[i].name)


def forced(exp: Experiment, header: str) -> Assignment | None:
    """The arm the QA header asks for; None when the header is for another experiment."""
    name, _, arm = header.strip().rpartition(":")
    if name and name != exp.name:
        return None
    if exp.arm(arm) is None:
        raise UnknownArm(f"{HEADER}: experiment {exp.name!r} has no arm {arm!r} "
                         f"(arms: {', '.join(a.name for a in exp.arms)})")
    return Assignment(exp.name, arm, forced=True)
