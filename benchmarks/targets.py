"""Where the issues' numeric targets stand: read recorded results, compare them with each target, write a table.

Every number in the table is read from a results JSON that a benchmark script wrote (``benchmarks/results/``);
nothing is typed in. A configuration (``configs/benchmarks/targets.yaml``) lists the targets: for each, the
bound, the direction, the JSON value that measures it (a dotted path such as ``results.salm.test_accuracy``) and
the result files of the runs that count (the defaults, one file per seed). The verdict is taken on the mean over
those runs; the table also says how many single runs meet the bound, so a mean that hides a spread is visible.

A target may name the protector whose defaults its runs must have used (``defaults_of: salm`` and the dotted path
of the recorded options, ``options: results.salm.options``). Each run's recorded options are then compared with the
protector's current defaults as resolved on a CPU: an option the record lacks counts as the value checkpoints of
that time were fitted with (``Protector.legacy_defaults``), else as today's default; a recorded option that no longer
exists must be off (0, false, none). A run that differs is an error, so the table cannot keep quoting runs whose
settings are no longer the defaults.

Usage::

    python benchmarks/targets.py --config configs/benchmarks/targets.yaml --results benchmarks/results \\
        --output benchmarks/results/targets
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

COMPARISONS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, ">=": operator.ge}


class TargetError(ValueError):
    """A configuration or a result file that cannot be read as the configuration says."""


@dataclass(frozen=True)
class Run:
    """One recorded run that measures a target: its file, seed and value."""

    file: str
    seed: Any
    value: float


@dataclass(frozen=True)
class Verdict:
    """A target and what the recorded runs say of it."""

    issue: int
    target: str
    compare: str
    bound: float
    unit: str
    runs: tuple[Run, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(run.value for run in self.runs)

    @property
    def runs_meeting(self) -> int:
        return sum(COMPARISONS[self.compare](run.value, self.bound) for run in self.runs)

    @property
    def met(self) -> bool:
        return COMPARISONS[self.compare](self.mean, self.bound)

    @property
    def margin(self) -> float:
        """How far the mean is from the bound, positive on the wrong side."""
        return self.mean - self.bound if self.compare == "<=" else self.bound - self.mean

    def as_dict(self) -> dict[str, Any]:
        return {
            "issue": self.issue,
            "target": self.target,
            "compare": self.compare,
            "bound": self.bound,
            "unit": self.unit,
            "runs": [{"file": run.file, "seed": run.seed, "value": run.value} for run in self.runs],
            "mean": self.mean,
            "runs_meeting": self.runs_meeting,
            "met": self.met,
        }


def read_path(document: Any, path: str, where: str) -> Any:
    """The value at a dotted ``path`` of a JSON document (list items by their index).

    Args:
        document: the parsed JSON.
        path: keys joined by dots, e.g. ``results.salm.test_accuracy`` or ``runs.unet.protected.dice``.
        where: the file's name, for the error message.

    Returns:
        The value found.

    Raises:
        TargetError: a key or index along the path is absent.
    """
    value = document
    for key in path.split("."):
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            raise TargetError(f"{where}: no value at '{path}' (missing '{key}')")
    return value


def _load(path: Path, parse: Callable[[str], Any], what: str, syntax: str, syntax_error: type[Exception]) -> Any:
    """Parse the file at ``path``; a missing file or a syntax error becomes a :class:`TargetError` naming it."""
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise TargetError(f"{path}: no such {what}") from None
    except syntax_error as error:
        raise TargetError(f"{path}: not {syntax} ({error})") from None


def _number(value: Any, where: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TargetError(f"{where}: '{path}' is {value!r}, not a finite number")
    return float(value)


def default_differences(method: str, recorded: dict[str, Any]) -> list[str]:
    """How a run's recorded protector options differ from the protector's current defaults (on a CPU).

    Args:
        method: the registered protector name, e.g. ``salm``.
        recorded: the options a results file recorded for that protector.

    Returns:
        One line per differing option; empty when the run used today's defaults (its seed aside).
    """
    from medue_monai.protectors import get_protector_class

    protector_class = get_protector_class(method)
    current = protector_class(device="cpu").config()
    ignored = ("seed", "device")
    differences = []
    for key, default in current.items():
        if key in ignored:
            continue
        used = recorded.get(key, protector_class.legacy_defaults.get(key, default))
        if used != default:
            differences.append(f"{key}={used!r} (default {default!r})")
    for key, used in recorded.items():
        if key not in current and key not in ignored and used not in (0, False, None, "none", ""):
            differences.append(f"{key}={used!r} (an option since removed)")
    return differences


def evaluate_target(spec: dict[str, Any], results_dir: Path) -> Verdict:
    """Read the runs of one configured target and compare their mean with its bound.

    Args:
        spec: one entry of the configuration's ``targets`` list: ``issue``, ``target`` (words), ``compare``
            (``<=`` or ``>=``), ``bound``, ``unit``, ``value`` (the default dotted path) and ``runs`` (file names
            under ``results_dir``, or mappings ``{file, value}`` where a file keeps the number elsewhere);
            optionally ``defaults_of`` (a protector name) with ``options`` (the dotted path of its recorded options).
        results_dir: the folder of the result files.

    Returns:
        The verdict.

    Raises:
        TargetError: a missing field, an unknown comparison, a missing or unreadable file, a value that is not
            a finite number, or a run whose options are not the named protector's defaults.
    """
    for field in ("issue", "target", "compare", "bound", "runs"):
        if field not in spec:
            raise TargetError(f"target {spec.get('target', spec)!r}: missing field '{field}'")
    if spec["compare"] not in COMPARISONS:
        raise TargetError(f"target {spec['target']!r}: compare must be one of {sorted(COMPARISONS)}")
    if not spec["runs"]:
        raise TargetError(f"target {spec['target']!r}: no runs listed")
    if spec.get("defaults_of") and not spec.get("options"):
        raise TargetError(f"target {spec['target']!r}: defaults_of needs the options path")
    runs = []
    for entry in spec["runs"]:
        file, path = (entry, spec.get("value")) if isinstance(entry, str) else (entry.get("file"), entry.get("value"))
        if not file or not path:
            raise TargetError(f"target {spec['target']!r}: run {entry!r} needs a file and a value path")
        location = results_dir / file
        document = _load(location, json.loads, "result file", "JSON", json.JSONDecodeError)
        value = _number(read_path(document, path, str(location)), str(location), path)
        if spec.get("defaults_of"):
            recorded = read_path(document, spec["options"], str(location))
            differences = default_differences(spec["defaults_of"], recorded)
            if differences:
                raise TargetError(
                    f"{location}: not {spec['defaults_of']}'s current defaults: " + ", ".join(differences)
                )
        runs.append(Run(file=file, seed=document.get("seed"), value=value))
    return Verdict(
        issue=int(spec["issue"]),
        target=str(spec["target"]),
        compare=spec["compare"],
        bound=float(spec["bound"]),
        unit=str(spec.get("unit", "")),
        runs=tuple(runs),
    )


def _format(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 1000 else f"{value:.1f}"


def markdown_table(verdicts: Sequence[Verdict]) -> str:
    """A markdown table: target, bound, the value of each run (with its seed, ``-`` where none is recorded), mean,
    how many runs meet the bound, and the verdict on the mean (a miss says by how much, in points for percentages)."""
    lines = [
        "| issue | target | bound | runs: value (seed) | mean | runs meeting | verdict on the mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for verdict in verdicts:
        values = "; ".join(f"{_format(run.value)} ({'-' if run.seed is None else run.seed})" for run in verdict.runs)
        margin_unit = "points" if verdict.unit == "%" else verdict.unit
        state = "met" if verdict.met else f"missed by {_format(verdict.margin)} {margin_unit}".rstrip()
        lines.append(
            f"| {verdict.issue} | {verdict.target} | {verdict.compare} {_format(verdict.bound)} {verdict.unit} | "
            f"{values} | {_format(verdict.mean)} | {verdict.runs_meeting} of {len(verdict.runs)} | {state} |"
        )
    return "\n".join(lines) + "\n"


def run(config: Path, results_dir: Path, output: Path | None) -> list[Verdict]:
    """Evaluate every target of ``config``; write ``output``.md and ``output``.json when given.

    Raises:
        TargetError: an unreadable configuration or any target that cannot be evaluated.
    """
    document = _load(config, yaml.safe_load, "configuration", "YAML", yaml.YAMLError)
    if not isinstance(document, dict) or not isinstance(document.get("targets"), list):
        raise TargetError(f"{config}: expected a mapping with a 'targets' list")
    verdicts = [evaluate_target(spec, results_dir) for spec in document["targets"]]
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.with_suffix(".md").write_text(markdown_table(verdicts))
        record = {
            "benchmark": "targets",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": str(config),
            "targets": [verdict.as_dict() for verdict in verdicts],
        }
        output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return verdicts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("configs/benchmarks/targets.yaml"),
        help="YAML list of targets and the result files of the runs that measure them",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("benchmarks/results"),
        help="folder the configuration's result files are named relative to",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write OUTPUT.md (the table) and OUTPUT.json; without it, only print the table",
    )
    args = parser.parse_args(argv)
    try:
        verdicts = run(args.config, args.results, args.output)
    except TargetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(verdicts), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
