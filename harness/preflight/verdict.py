"""A preflight's verdict: one row per check (ok / warn / refuse) and the facts behind it."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import HarnessError
from harness.preflight.targets import Target

OK = "ok"


WARN = "warn"


REFUSE = "refuse"


class PreflightRefused(HarnessError):
    """A model would not run (or not as asked) here; ``report`` holds every row."""

    def __init__(self, report: PreflightReport):
        super().__init__(report.sentence())
        self.report = report


# -- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    check: str
    status: str  # ok | warn | refuse
    message: str  # one sentence


@dataclass
class PreflightReport:
    model: str  # registry id, hub id or directory
    hub_id: str | None
    target: Target | None = None
    allow_fallback: bool = False
    rows: list[Check] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # the fallbacks taken
    facts: dict = field(default_factory=dict)  # numbers for tables and provenance
    load_kwargs: dict = field(default_factory=dict)  # what loading must pass (the fallback)

    def add(self, check: str, status: str, message: str) -> None:
        self.rows.append(Check(check, status, message))

    def row(self, check: str) -> Check | None:
        return next((r for r in self.rows if r.check == check), None)

    @property
    def refusals(self) -> list[Check]:
        return [r for r in self.rows if r.status == REFUSE]

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def resource_only(self) -> bool:
        """Refused only for memory or disk: the model is fine, this machine is too small."""
        return self.refused and all(r.check in ("memory", "disk") for r in self.refusals)

    def sentence(self) -> str:
        """The refusals, one sentence each, in check order ("" when nothing is refused)."""
        return " ".join(r.message for r in self.refusals)

    def raise_if_refused(self) -> PreflightReport:
        if self.refused:
            raise PreflightRefused(self)
        return self

    def provenance(self) -> dict:
        """What a result records about how the model was (to be) run."""
        f = self.facts
        keys = (
            "weight_format",
            "kernel_path",
            "attn_implementation",
            "experts_implementation",
            "loaded_dtype",
            "needed_gib",
        )
        status = "refused" if self.refused else ("fallback" if self.labels else "ok")
        return {
            "preflight": status,
            **{k: f.get(k) for k in keys},
            "fallback": dict(self.labels),
            "target": f.get("target"),
        }

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "hub_id": self.hub_id,
            "ok": self.ok,
            "rows": [vars(r) for r in self.rows],
            "labels": dict(self.labels),
            "facts": self.facts,
        }

    def table(self) -> str:
        from tabulate import tabulate

        rows = [[r.check, r.status, r.message] for r in self.rows]
        return tabulate(
            rows,
            headers=["check", "status", self.model],
            tablefmt="simple",
            maxcolwidths=[None, None, 90],
        )
