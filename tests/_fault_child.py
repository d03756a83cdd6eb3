"""Child process of tests/test_faults.py: ``sanet train`` with one fault injected.

    python tests/_fault_child.py KILL|TERM WHERE N -- CONFIG --out RUN --set ...

The process sends itself SIGKILL or SIGTERM at the N-th time WHERE happens:

- ``write:NAME``: an atomic write of the file NAME (e.g. ``last.pt``), when its temporary file
  holds all the data and the rename has not happened yet;
- ``step``: the end of an optimiser step, before the next;
- ``validate``: the start of a validation pass.
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    sig_name, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1 :]
    sig, seen = getattr(signal, f"SIG{sig_name}"), []

    def maybe_fire() -> None:
        seen.append(1)
        if len(seen) == n:
            os.kill(os.getpid(), sig)

    from sanet.training import engine

    if where.startswith("write:"):
        name, real_replace = where.partition(":")[2], os.replace

        def replace(src, dst, *a, **k):  # sanet._files renames every finished write with this
            if os.path.basename(dst) == name:
                maybe_fire()
            return real_replace(src, dst, *a, **k)

        os.replace = replace
    elif where == "step":
        real_step = engine.train_step

        def train_step(*a, **k):
            result = real_step(*a, **k)
            maybe_fire()
            return result

        engine.train_step = train_step
    elif where == "validate":
        from sanet.training import trainer

        real_evaluate = trainer.evaluate_pairs

        def evaluate(*a, **k):
            maybe_fire()
            return real_evaluate(*a, **k)

        trainer.evaluate_pairs = evaluate
    else:
        raise SystemExit(f"unknown fault point {where!r}")
    from sanet.cli import main as sanet_main

    return sanet_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
