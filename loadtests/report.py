"""The benchmark's results table: machine facts, rows of figures, text and Markdown renderings."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any


@dataclass
class Row:
    figure: str
    ours: float | None
    unit: str
    anchor: float | None = None  # measured here (Redis, redis-py), when there is one
    anchor_label: str = ""
    target: float | None = None
    target_op: str = "<="  # "<=", "<" or ">="; "" for figures without a target
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.anchor:
            return None
        return self.ours / self.anchor

    @property
    def passed(self) -> bool | None:
        if self.ours is None or self.target is None:
            return None
        if self.target_op == ">=":
            return self.ours >= self.target
        return self.ours < self.target if self.target_op == "<" else self.ours <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "passed": self.passed}

    def cells(self) -> list[str]:
        anchor = f"{self.anchor_label} {_num(self.anchor, self.unit)}" if self.anchor else "—"
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else "—"
        target = f"{self.target_op} {_num(self.target, self.unit)}" if self.target else "(info)"
        if self.passed is None:
            result = "—"
        elif self.passed:
            result = "PASS"
        else:
            result = f"FAIL ({self.ours / self.target:.1f}x target)"  # type: ignore[operator]
        return [self.figure, _num(self.ours, self.unit), anchor.strip(), ratio, target, result]


HEADERS = ["figure", "ours", "anchor (measured here)", "ours/anchor", "target", "result"]


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ops/s":
        return f"{value:,.0f} ops/s"
    if unit == "B":
        return f"{value:,.0f} B"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def render_text(rows: list[Row]) -> str:
    table = [HEADERS] + [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    lines = []
    for n, line in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        match = re.search(r"v=(\S+)", out)
        redis_version = match.group(1) if match else out.strip()
    except OSError:
        redis_version = "not installed"
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    if git and dirty:
        git += " + uncommitted changes"
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "msgpack": _version("msgpack"),
        "uvloop": _version("uvloop"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "git_commit": git or "none yet",
    }
