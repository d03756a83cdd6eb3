"""Child process of tests/test_reliability_signals.py: ``sanet compare`` that sends itself a
real signal at one point.

    python tests/_compare_child.py INT|TERM WHERE N -- COMPARE ARGS...

The process sends itself SIGINT or SIGTERM the N-th time WHERE happens:

- ``step``: the end of an optimiser step (a run's training);
- ``validate``: the start of a validation pass (a run's validation, the final one included);
- ``finished``: a run's result is read, after its training returned (between runs);
- ``build``: a run's datasets are built, before its training starts (between runs).
"""

from __future__ import annotations

import os
import signal
import sys


def main() -> int:
    sig_name, where, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    args = sys.argv[sys.argv.index("--") + 1 :]
    sig, seen = getattr(signal, f"SIG{sig_name}"), []

    def hook(real):
        def wrapper(*a, **k):
            if where in ("validate", "build"):  # at its start
                seen.append(1)
                if len(seen) == n:
                    os.kill(os.getpid(), sig)
            result = real(*a, **k)
            if where in ("step", "finished"):  # at its end
                seen.append(1)
                if len(seen) == n:
                    os.kill(os.getpid(), sig)
            return result

        return wrapper

    from sanet.experiments import compare
    from sanet.training import engine, trainer

    if where == "step":
        engine.train_step = hook(engine.train_step)
    elif where == "validate":
        trainer.evaluate_pairs = hook(
            trainer.evaluate_pairs
        )  # validation's one loop, as trainer names it
    elif where == "finished":
        compare.read_result = hook(compare.read_result)
    elif where == "build":
        trainer.build_data = hook(trainer.build_data)
    else:
        raise SystemExit(f"unknown point {where!r}")
    from sanet.cli import main as sanet_main

    return sanet_main(["compare", *args])


if __name__ == "__main__":
    sys.exit(main())
