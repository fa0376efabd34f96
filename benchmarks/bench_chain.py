"""The default chain's wall time with a per-rule breakdown.

Every rule writes a Snakemake ``benchmark:`` file (``logs/benchmarks/<rule>/<log path>.tsv``:
the job's wall seconds, peak memory, CPU time).  :func:`summarise` groups them by rule: jobs,
summed and largest wall seconds, summed CPU seconds, and the rule's share of the summed job time;
the chain's own wall time comes from the newest ``.snakemake/log`` file (first to last timestamp).

``python benchmarks/run.py chain`` summarises the default chain of the repository (running
``snakemake --cores 2 all`` first when it has not run); ``--quick`` runs the test overlay in a
temporary directory.  ``python benchmarks/bench_chain.py DIR [DIR ...]`` prints the breakdown of
finished runs side by side (e.g. before and after a change).
"""

from __future__ import annotations

import csv
import logging
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")


def wall_seconds(workdir: Path) -> float | None:
    """First to last timestamp of the newest Snakemake log of ``workdir``."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        return None
    stamps = []
    for line in logs[-1].read_text().splitlines():
        m = STAMP.match(line)
        if m:
            stamps.append(datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y"))
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else None


JOB_START = re.compile(r"^(?:local)?rule (\w+):$")
JOB_ID = re.compile(r"^\s+jobid: (\d+)$")
JOB_END = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def log_jobs(log_path: Path) -> dict[str, dict[str, float]]:
    """Per-rule job seconds from a Snakemake log (start stamp to the stamp of ``Finished
    jobid``, 1 s resolution): the breakdown of a run made before rules had ``benchmark:``
    files.  Jobs without a ``Finished`` line (failed, or still running) are left out."""
    stamp = None
    started: dict[str, tuple[str, datetime]] = {}
    pending_rule = None
    per: dict[str, dict[str, float]] = {}
    for line in log_path.read_text().splitlines():
        m = STAMP.match(line)
        if m:
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        if (m := JOB_START.match(line)) and stamp is not None:
            pending_rule = (m.group(1), stamp)
            continue
        if (m := JOB_ID.match(line)) and pending_rule is not None:
            started[m.group(1)] = pending_rule
            pending_rule = None
            continue
        if (m := JOB_END.match(line)) and stamp is not None and m.group(1) in started:
            rule, t0 = started.pop(m.group(1))
            if rule == "all":
                continue
            s = (stamp - t0).total_seconds()
            entry = per.setdefault(
                rule, {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0, "cpu": 0.0}
            )
            entry["jobs"] += 1
            entry["seconds"] += s
            entry["max_seconds"] = max(entry["max_seconds"], s)
    return per


def summarise(workdir: str | Path) -> dict[str, Any]:
    """Per-rule breakdown of the benchmark files under ``workdir/logs/benchmarks`` (or, where
    there are none, of the newest Snakemake log: :func:`log_jobs`, no CPU time)."""
    root = Path(workdir) / "logs" / "benchmarks"
    per: dict[str, dict[str, float]] = {}
    logs = sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"))
    if not root.exists() and logs:
        per = log_jobs(logs[-1])
    for path in sorted(root.rglob("*.tsv")):
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]
        group = path.relative_to(root).parts[0]  # logs/benchmarks/<rule>/...
        entry = per.setdefault(group, {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0, "cpu": 0.0})
        s = float(row["s"])
        entry["jobs"] += 1
        entry["seconds"] += s
        entry["max_seconds"] = max(entry["max_seconds"], s)
        entry["cpu"] += float(row.get("cpu_time") or 0.0)
    total = sum(e["seconds"] for e in per.values()) or 1.0
    for e in per.values():
        e["share"] = e["seconds"] / total
    return {
        "wall_seconds": wall_seconds(Path(workdir)),
        "job_seconds": total,
        "rules": dict(sorted(per.items(), key=lambda kv: -kv[1]["seconds"])),
    }


def table(summaries: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of one or more summaries (columns: the runs)."""
    names = list(summaries)
    rules = list(dict.fromkeys(r for s in summaries.values() for r in s["rules"]))
    head = "| rule (job group) | " + " | ".join(f"{n}: jobs, s" for n in names) + " |"
    lines = [head, "|---|" + "---|" * len(names)]
    for r in rules:
        cells = []
        for n in names:
            e = summaries[n]["rules"].get(r)
            cells.append(f"{e['jobs']}, {e['seconds']:.0f}" if e else "-")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    walls = [summaries[n]["wall_seconds"] for n in names]
    cells = " | ".join(f"{w:.0f} s" if w else "?" for w in walls)
    lines.append(f"| **wall time** | {cells} |")
    return "\n".join(lines)


def _run_chain(workdir: Path, *extra: str) -> None:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", *extra, "all"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=workdir)


def run(quick: bool = False) -> dict:
    if quick:
        with tempfile.TemporaryDirectory() as tmp:
            overlay = ["--configfile", str(ROOT / "config" / "config.yaml"),
                       str(ROOT / "config" / "test.yaml")]  # fmt: skip
            _run_chain(Path(tmp), *overlay)
            out = summarise(tmp)
    else:
        if not (ROOT / "logs" / "benchmarks").exists():
            _run_chain(ROOT)
        out = summarise(ROOT)
    log.info("%s", table({"run": out}))
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dirs = sys.argv[1:] or [str(ROOT)]
    print(table({d: summarise(d) for d in dirs}))
