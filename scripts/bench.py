"""Runs every benchmark of the project, prints a table and writes bench-results.json.

A benchmark is a file `benchmarks/bench_*.py` under libs/* or services/* with `async def run()`
returning records {name, value, unit, goal, met}. Goals are reported, never enforced: a missed goal
shows in the table and the JSON, and the exit code only says whether every benchmark ran.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def discover(selected: list[str]) -> list[Path]:
    files = sorted(
        [*ROOT.glob("libs/*/benchmarks/bench_*.py"), *ROOT.glob("services/*/benchmarks/bench_*.py")]
    )
    if selected:
        files = [f for f in files if any(s in str(f.relative_to(ROOT)) for s in selected)]
    return files


def load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{path.parent.parent.name}_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_one(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    try:
        records = asyncio.run(load(path).run())
        return list(records), None
    except Exception:
        return [], traceback.format_exc()


def print_table(records: list[dict[str, Any]]) -> None:
    header = f"{'benchmark':<58} {'value':>12} {'unit':<8} {'goal':<22} met"
    print(header)
    print("-" * len(header))
    for record in records:
        met = {True: "yes", False: "NO", None: "-"}[record.get("met")]
        value = record["value"]
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{record['name']:<58} {shown:>12} {record['unit']:<8} {record.get('goal') or '':<22} {met}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="run only benchmarks whose path contains one of these")
    parser.add_argument("--output", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args()
    records: list[dict[str, Any]] = []
    failures: list[str] = []
    for path in discover(args.only):
        label = str(path.relative_to(ROOT))
        print(f"running {label} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        results, error = run_one(path)
        print(f"  done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        if error:
            failures.append(label)
            print(error, file=sys.stderr)
        records.extend({**r, "source": label} for r in results)
    print_table(records)
    Path(args.output).write_text(json.dumps(records, indent=2) + "\n")
    print(f"\nwrote {len(records)} figures to {args.output}")
    if failures:
        print(f"benchmarks that did not run: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
