"""`make mutants`: break the code on purpose, one realistic bug at a time, and check that the
default test suite (`make test`, i.e. not `slow`) notices each one.

Every mutation of ``catalogue.yaml`` replaces exact snippets (which must occur exactly once in
its file, so a stale entry fails loudly instead of silently testing nothing) in a temporary
copy of ``src/``, runs the test files it names against that copy (``PYTHONPATH``), and counts
as *caught* when they fail. The run fails if any mutation survives or no longer applies.

Usage: ``python tests/mutations/run.py [--only ID ...] [--area AREA] [--json FILE] [--list]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from catalogue import MUTATIONS, Mutation  # noqa: E402


def apply(mutation: Mutation, src: Path) -> str:
    """Write the mutated file into the copy ``src``; returns the original text to restore."""
    path = src / mutation.file
    text = mutated = path.read_text()
    for find, replace in mutation.edits:
        count = mutated.count(find)
        if count != 1:
            raise LookupError(
                f"{mutation.id}: the snippet occurs {count} times in src/{mutation.file} "
                f"(expected once); update tests/mutations/catalogue.yaml: {find!r}"
            )
        mutated = mutated.replace(find, replace)
    path.write_text(mutated)
    return text


def clean_suite_passes(chosen: list[Mutation], src: Path, timeout: float) -> bool:
    """The named tests must pass on the unmutated copy first: otherwise every mutation would
    count as caught by a failure that has nothing to do with it."""
    files = sorted({t for m in chosen for t in m.tests})
    clean = Mutation("(none)", "clean", "", (), tuple(files), "no mutation")
    failed, seconds, tail = run_tests(clean, src, timeout * 2)
    if failed:
        print(f"the named tests fail without any mutation ({seconds:.0f} s):\n{tail}")
    else:
        print(f"the {len(files)} named test files pass on the clean source ({seconds:.0f} s)")
    return not failed


def run_tests(mutation: Mutation, src: Path, timeout: float) -> tuple[bool, float, str]:
    """``(caught, seconds, last lines)``: the named tests of the default suite, against ``src``."""
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
    }
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow and not gpu",
        *mutation.tests,
    ]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:  # inconclusive: a slow machine, not a catch
        return False, time.perf_counter() - start, f"timed out after {timeout:.0f} s (not counted)"
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    if proc.returncode == 5:  # nothing collected: a typo in the catalogue, not a catch
        raise LookupError(f"{mutation.id}: no test collected by {mutation.tests}")
    return proc.returncode != 0, time.perf_counter() - start, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="mutation ids to run")
    parser.add_argument("--area", help="only the mutations of this area (model, loss, ...)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="only check that every one applies")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation")
    args = parser.parse_args(argv)
    chosen = [
        m
        for m in MUTATIONS
        if (not args.only or m.id in args.only) and (not args.area or m.area == args.area)
    ]
    if args.list:
        for m in chosen:
            print(f"{m.id:<28} {m.area:<10} {m.description}")
        return 0
    if not chosen:
        print("no mutation selected", file=sys.stderr)
        return 2
    results, survived, stale = [], [], []
    with tempfile.TemporaryDirectory(prefix="sanet-mutants-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(
            ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
        if not args.check and not clean_suite_passes(chosen, src, args.timeout):
            return 2
        for n, mutation in enumerate(chosen, start=1):
            try:
                original = apply(mutation, src)
            except LookupError as err:
                stale.append(str(err))
                print(f"[{n}/{len(chosen)}] STALE    {mutation.id}: {err}", flush=True)
                continue
            if args.check:
                (src / mutation.file).write_text(original)
                continue
            try:
                caught, seconds, tail = run_tests(mutation, src, args.timeout)
            except LookupError as err:
                stale.append(str(err))
                caught, seconds, tail = False, 0.0, str(err)
            finally:
                (src / mutation.file).write_text(original)
            status = "caught" if caught else "SURVIVED"
            if not caught:
                survived.append(mutation.id)
            print(
                f"[{n}/{len(chosen)}] {status:<8} {mutation.id} ({seconds:.0f} s) "
                f"{mutation.description}",
                flush=True,
            )
            if not caught:
                print(f"    {tail}", flush=True)
            results.append(
                {
                    "id": mutation.id,
                    "area": mutation.area,
                    "caught": caught,
                    "seconds": round(seconds, 1),
                    "tests": mutation.tests,
                }
            )
    if args.check:
        print(f"{len(chosen) - len(stale)} of {len(chosen)} mutations apply")
        return 1 if stale else 0
    caught_n = sum(r["caught"] for r in results)
    print(
        f"\nmutation score: {caught_n} of {len(chosen)} caught by the default suite"
        + (f"; survived: {', '.join(survived)}" if survived else "")
        + (f"; {len(stale)} stale" if stale else "")
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"caught": caught_n, "total": len(chosen), "results": results, "stale": stale},
                indent=1,
            )
            + "\n"
        )
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
