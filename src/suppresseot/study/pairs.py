"""Which (task, approach) pairs a batch runs: every selected task, by every approach that can run it here.

The unit of work of ``batch`` is a pair, one task run by one approach, written to one run directory
``<task id>--<approach>--<backend>``. Pairs come task-major (the first task by every approach, then the
second, ...), so a batch killed midway leaves complete comparisons for its first tasks. A pair the approach
cannot run (a photo for a baseline of generated images, an add task for an approach that only suppresses,
a backend or model family it has no pipeline for) is left out, not failed, and the batch says so in one
line. An approach named explicitly that would run nothing here is an error before any work: the user
asked for it. ``all`` means every approach that fits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..approaches import DEFAULT, FAMILIES, get, parse_list
from ..errors import SuppressEOTError
from .manifests import Task, approach_list


def run_name(task_id: str, approach: str, backend: str) -> str:
    """The run directory of a pair, e.g. ``vangogh-02--sega--torch``."""
    return f"{task_id}--{approach}--{backend}"


@dataclass
class Pair:
    """One task run by one approach: one run directory."""

    task: Task
    approach: str = DEFAULT

    def name(self, backend: str) -> str:
        return run_name(self.task.id, self.approach, backend)

    @property
    def key(self) -> tuple[str, str]:
        return self.task.id, self.approach

    @property
    def label(self) -> str:
        """How progress lines name it: the task first, as a user looks it up."""
        return f"{self.task.id} [{self.approach}]"


def as_pair(item: Task | Pair) -> Pair:
    """A pair; a bare task (callers from before approaches) is SuppressEOT's."""
    return item if isinstance(item, Pair) else Pair(item)


@dataclass
class Plan:
    """The batch's approaches on its backend; ``every``: chosen by ``all`` (what cannot run here is left out,
    never an error); ``families``: each task's model family where known before the weights load (by task id;
    a task without one is checked by the API when it runs)."""

    approaches: list[str] = field(default_factory=lambda: [DEFAULT])
    backend: str = "torch"
    every: bool = False
    families: dict[str, str] = field(default_factory=dict)

    @classmethod
    def choose(cls, given, backend: str) -> "Plan":
        """``given``: ``a,b``, a list of names or ``all``, checked by name (None: SuppressEOT alone)."""
        if given is None:
            return cls(backend=backend)
        chosen = approach_list(given)
        return cls(parse_list(chosen), backend, every=chosen == ["all"])

    @property
    def needs_families(self) -> bool:
        """Whether an approach of the batch that runs on its backend lacks a pipeline for some model family
        (then the tasks' families are worth knowing before the model loads)."""
        return any(set(FAMILIES) - set(a.families) for a in map(get, self.approaches)
                   if self.backend in a.backends)

    def misfit(self, task: Task, name: str) -> str | None:
        """Why approach ``name`` cannot run ``task`` here, in the words of the left-out line; None if it can."""
        approach, family = get(name), self.families.get(task.id)
        for value, supported, why in ((self.backend, approach.backends, f"not on {self.backend}"),
                                      (family, approach.families, f"not for {family} models"),
                                      (task.type, approach.kinds,
                                       "not for photos" if task.type == "real" else "not for generated images"),
                                      (task.mode, approach.modes, f"not for {task.mode} tasks")):
            if value is not None and value not in supported:
                return why
        return None

    def pairs(self, tasks: list[Task]) -> list[Pair]:
        """Task-major: each task by each approach (in the given order) that can run it here."""
        return [Pair(task, name) for task in tasks for name in self.approaches if self.misfit(task, name) is None]

    def check(self, tasks: list[Task]) -> None:
        """An approach named explicitly must run on this backend and these models, and run at least one of the
        selected tasks: else one line why, before anything is written or loaded."""
        if self.every:
            return
        families = sorted({self.families[t.id] for t in tasks if t.id in self.families})
        for name in self.approaches:
            approach = get(name).check(backend=self.backend)
            for family in families:
                approach.check(family=family)
            if tasks and all(self.misfit(task, name) for task in tasks):  # by kind or mode (the rest passed)
                try:
                    approach.check(kind=tasks[0].type, mode=tasks[0].mode)
                except SuppressEOTError as exc:
                    raise SuppressEOTError(f"none of the {len(tasks)} selected task(s) can be run by {name}: "
                                           f"{exc}") from None

    def left_out(self, tasks: list[Task]) -> str | None:
        """One line on the pairs left out and why (None when every approach runs every task)."""
        by_why: dict[str, dict[str, int]] = {}
        for task in tasks:
            for name in self.approaches:
                why = self.misfit(task, name)
                if why is not None:
                    counts = by_why.setdefault(why, {})
                    counts[name] = counts.get(name, 0) + 1
        if not by_why:
            return None
        total = sum(sum(counts.values()) for counts in by_why.values())
        reasons = "; ".join(f"{', '.join(counts)} {why} ({sum(counts.values())})" for why, counts in by_why.items())
        return (f"left out {total} of {len(tasks) * len(self.approaches)} (task, approach) pairs that cannot run "
                f"here: {reasons}")
