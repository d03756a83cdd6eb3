"""The numbers, tables and curves of the active-learning simulation (``active_learning.py
report``; docs/active-learning.md): mIoU against labelled images per strategy, each strategy −
random paired by run with 95 % t-intervals (``sanet.stats``), and the labels each strategy needed
to reach random selection's final mIoU (issue 33's target: at least 30 % fewer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

STRATEGIES = ("random", "rank", "suggest")
#: issue 33's target: random's final mIoU with at least this share fewer labelled images
TARGET_SAVING = 0.30


def curves(records: dict[tuple, dict[str, Any]]) -> dict[tuple, dict[str, list]]:
    """``{(member, seed): {strategy: [(labelled, mIoU), ...]}}`` for each run whose seed round
    is done; round 0 (the shared seed set) starts every strategy's curve."""
    runs = sorted((m, s) for m, s, strategy, _ in records if strategy == "seed")
    out: dict[tuple, dict[str, list]] = {}
    for m, s in runs:
        r0 = records[(m, s, "seed", 0)]
        out[(m, s)] = {}
        for name in STRATEGIES:
            rounds = sorted(k for mm, ss, st, k in records if (mm, ss, st) == (m, s, name))
            points = [r0] + [records[(m, s, name, k)] for k in rounds]
            out[(m, s)][name] = [(r["labelled"], r["mIoU"]) for r in points]
    return out


def labels_to_reach(curve: list, target: float) -> int | None:
    """The fewest labelled images at which ``curve`` reaches ``target`` (``None``: never)."""
    reached = [n for n, miou in curve if miou >= target]
    return min(reached) if reached else None


def summarize(records: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    """Per-run reach of random's final mIoU, and each strategy − random at each label count
    over the complete runs (every strategy at random's last label count)."""
    from sanet.stats import paired_difference, t_interval

    all_curves = curves(records)
    last = max((c["random"][-1][0] for c in all_curves.values()), default=0)
    complete = {
        run: c
        for run, c in all_curves.items()
        if all(c[name][-1][0] == last for name in STRATEGIES)
    }
    runs = []
    for (m, s), c in all_curves.items():
        final = c["random"][-1]
        reach = {name: labels_to_reach(c[name], final[1]) for name in STRATEGIES}
        runs.append({"member": m, "seed": s, "complete": (m, s) in complete, "curves": c})
        runs[-1] |= {"random_final": final[1], "random_labels": final[0], "reach": reach}
    counts = sorted({n for c in complete.values() for n, _ in c["random"]})
    mean_curves: dict[str, list] = {name: [] for name in STRATEGIES}
    differences: dict[str, list] = {name: [] for name in STRATEGIES[1:]}
    for i, n in enumerate(counts):
        for name in STRATEGIES:
            t = t_interval([c[name][i][1] for c in complete.values()])
            mean_curves[name].append({"labelled": n} | t)
        for name in STRATEGIES[1:]:
            a = [c["random"][i][1] for c in complete.values()]
            b = [c[name][i][1] for c in complete.values()]
            differences[name].append({"labelled": n} | paired_difference(a, b))
    # one number per run that every round feeds (less noisy than one round): the mean over the
    # rounds after the seed set of strategy − random
    per_run = {
        name: {
            run: sum(b - a for (_, a), (_, b) in zip(c["random"][1:], c[name][1:], strict=True))
            / max(len(c["random"]) - 1, 1)
            for run, c in complete.items()
        }
        for name in STRATEGIES[1:]
    }
    over_rounds = {name: t_interval(list(d.values())) for name, d in per_run.items()}
    # seeds are nested in generators: the same with each generator (its seeds' mean) the unit
    by_generator = {}
    for name, d in per_run.items():
        members = sorted({m for m, _ in d})
        means = [sum(v for (m, _), v in d.items() if m == g) for g in members]
        counts = [sum(1 for m, _ in d if m == g) for g in members]
        by_generator[name] = t_interval([x / n for x, n in zip(means, counts, strict=True)])
    return {
        "runs": runs,
        "complete_runs": len(complete),
        "over_rounds": over_rounds,
        "over_rounds_by_generator": by_generator,
        "mean_curves": mean_curves,
        "differences": differences,
        "target": target_summary(runs, mean_curves, last),
    }


def target_summary(runs: list[dict], mean_curves: dict[str, list], last: int) -> dict[str, Any]:
    """Issue 33's target per strategy: in how many complete runs it reached random's final mIoU
    with at most ``(1 − 30 %) × last`` labels, and the labels its *mean* curve needed to reach
    random's mean final mIoU."""
    allowed = int((1 - TARGET_SAVING) * last)
    done = [r for r in runs if r["complete"]]
    out: dict[str, Any] = {"allowed_labels": allowed, "final_labels": last}
    goal = mean_curves["random"][-1]["mean"] if mean_curves["random"] else None
    for name in STRATEGIES:
        hits = [r for r in done if r["reach"][name] is not None and r["reach"][name] <= allowed]
        mean = [(p["labelled"], p["mean"]) for p in mean_curves[name]]
        out[name] = {
            "runs_reaching_target": len(hits),
            "runs": len(done),
            "mean_curve_reach": None if goal is None else labels_to_reach(mean, goal),
        }
    return out


def _interval(d: dict[str, Any]) -> str:
    if d["ci95"] is None:
        return f"{d['mean']:+.4f} (n = {d['n']})"
    return "{:+.4f} [{:+.4f}, {:+.4f}]".format(d["mean"], *d["ci95"])


def markdown(summary: dict[str, Any]) -> str:
    """The per-run table, the differences table and the target's lines, in markdown."""
    lines = ["| generator, seed | strategy | mIoU (labelled images) → | reaches random's last at |"]
    lines.append("|---|---|---|---:|")
    for r in summary["runs"]:
        for name in STRATEGIES:
            cells = " → ".join(f"{v:.3f} ({n})" for n, v in r["curves"][name])
            reach = r["reach"][name]
            lines.append(
                f"| m{r['member']}, s{r['seed']} | {name} | {cells} | "
                f"{'not reached' if reach is None else reach} |"
            )
    lines += ["", "| labelled | random (mean) | `rank` − random | `suggest` − random |"]
    lines.append("|---:|---:|---:|---:|")
    diffs, means = summary["differences"], summary["mean_curves"]
    for i, point in enumerate(means["random"]):
        cells = [_interval(diffs[name][i]) for name in STRATEGIES[1:]]
        if i == 0:
            cells = ["0 (the shared seed set)"] * 2
        lines.append(f"| {point['labelled']} | {point['mean']:.4f} | " + " | ".join(cells) + " |")
    over = summary["over_rounds"]
    cells = " | ".join(_interval(over[name]) for name in STRATEGIES[1:])
    lines.append(f"| mean over rounds 1 to last | | {cells} |")
    by = summary["over_rounds_by_generator"]
    cells = " | ".join(_interval(by[name]) for name in STRATEGIES[1:])
    lines.append(f"| the same, generators the unit | | {cells} |")
    t = summary["target"]
    lines += [
        "",
        f"Target: random's final mIoU with ≤ {t['allowed_labels']} of {t['final_labels']}",
    ]
    for name in STRATEGIES:
        s = t[name]
        reach = s["mean_curve_reach"]
        lines.append(
            f"- {name}: reached in {s['runs_reaching_target']} of {s['runs']} runs; mean curve "
            f"reaches random's mean final {'never' if reach is None else f'at {reach} labels'}"
        )
    return "\n".join(lines) + "\n"


def write_curves(summary: dict[str, Any], path: Path) -> Path:
    """``path``: top row, each generator's curves (thin: one per seed; thick: their mean);
    bottom, the mean over every complete run with its 95 % interval, and each strategy − random
    paired by run with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted({r["member"] for r in summary["runs"] if r["complete"]})
    fig = plt.figure(figsize=(11, 7))
    grid = fig.add_gridspec(2, max(len(members), 2) * 2)
    half = max(len(members), 2)
    width = 2 * half // max(len(members), 1)
    for j, m in enumerate(members):
        ax = fig.add_subplot(grid[0, j * width : (j + 1) * width])
        _member_panel(ax, [r for r in summary["runs"] if r["member"] == m and r["complete"]])
        ax.set_title(f"member {m}", fontsize=10)
    _mean_panel(fig.add_subplot(grid[1, :half]), summary)
    _difference_panel(fig.add_subplot(grid[1, half:]), summary)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _member_panel(ax: Any, runs: list[dict]) -> None:
    for k, name in enumerate(STRATEGIES):
        for r in runs:
            x, y = zip(*r["curves"][name], strict=True)
            ax.plot(x, y, color=f"C{k}", lw=0.7, alpha=0.5)
        x = [n for n, _ in runs[0]["curves"][name]]
        mean = [sum(r["curves"][name][i][1] for r in runs) / len(runs) for i in range(len(x))]
        ax.plot(x, mean, color=f"C{k}", lw=2, marker="o", ms=3, label=name)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("val mIoU")
    ax.legend(fontsize=7)


def _mean_panel(ax: Any, summary: dict[str, Any]) -> None:
    for k, name in enumerate(STRATEGIES):
        pts = summary["mean_curves"][name]
        x = [p["labelled"] for p in pts]
        ax.plot(x, [p["mean"] for p in pts], marker="o", color=f"C{k}", label=name)
        ci = [p["ci95"] for p in pts]
        if all(ci):
            ax.fill_between(x, *zip(*ci, strict=True), color=f"C{k}", alpha=0.1)
    n = summary["complete_runs"]
    ax.set_title(f"mean over {n} runs (band: 95 % CI, generators differ)", fontsize=10)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("val mIoU")
    ax.legend(fontsize=8)


def _difference_panel(ax: Any, summary: dict[str, Any]) -> None:
    for k, name in enumerate(STRATEGIES[1:], 1):
        pts = summary["differences"][name][1:]  # round 0 is shared: no difference
        x = [p["labelled"] + (k - 1.5) for p in pts]  # side by side
        y = [p["mean"] for p in pts]
        ci = [(m, m) if p["ci95"] is None else p["ci95"] for m, p in zip(y, pts, strict=True)]
        lo = [m - c[0] for m, c in zip(y, ci, strict=True)]
        hi = [c[1] - m for m, c in zip(y, ci, strict=True)]
        ax.errorbar(x, y, yerr=[lo, hi], fmt="o", capsize=3, color=f"C{k}", label=name)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("strategy − random, paired by run (95 % CI)", fontsize=10)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("val mIoU difference")
    ax.legend(fontsize=8)
