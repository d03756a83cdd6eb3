"""Statistics and plots of the learning study (benchmarks/learning_study.py, docs/learning.md).

The unit of the family-wide result is the *member*: each member's difference is the mean over
its seeds, and the interval is a t-interval over members (seeds are nested in members, so
counting every (member, seed) pair as independent would overstate the precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sanet.stats import t_interval

#: the scene properties a study regresses the difference on (FamilyMember.parameters())
REGRESSORS = (
    "num_classes",
    "context_share",
    "colour_info",
    "size_mean",
    "clutter",
    "occlusion",
    "max_objects",
    "shared_cues",
)
PAIRS = (("sanet", "fcn"), ("sanet", "sanet_se"))


def per_seed(payload: Mapping[str, Any], model: str) -> dict[int, float]:
    """``{seed: final val mIoU}`` of ``model`` in one ``compare.json``."""
    return {r["seed"]: r["mIoU"] for r in payload["runs"] if r["model"] == model}


def summarize_screen(
    runs: Mapping[str, Mapping[int, Mapping[str, Any]]], variants: Sequence[str]
) -> dict[str, Any]:
    """Per variant and model: mIoU per screening member, its mean, and the change from ``base``
    paired by member."""
    base = runs.get("base", {})
    out: dict[str, Any] = {}
    for name in variants:
        if name not in runs:
            continue
        row: dict[str, Any] = {}
        for model in ("sanet", "fcn"):
            got = {m: per_seed(p, model).get(0) for m, p in runs[name].items()}
            got = {m: v for m, v in got.items() if v is not None}
            ref = {m: per_seed(p, model).get(0) for m, p in base.items()}
            deltas = [got[m] - ref[m] for m in got if ref.get(m) is not None]
            row[model] = {
                "mIoU": {str(m): v for m, v in sorted(got.items())},
                "mean": float(np.mean(list(got.values()))) if got else None,
                "delta_vs_base": float(np.mean(deltas)) if deltas and name != "base" else None,
            }
        out[name] = row
    return out


def _member_rows(compares: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for member, payload in sorted(compares.items()):
        models = payload["models"]
        row: dict[str, Any] = {"member": member, "seeds": payload["seeds"], "mIoU": {}}
        for model in models:
            row["mIoU"][model] = float(np.mean(list(per_seed(payload, model).values())))
        for a, b in PAIRS:
            if a in models and b in models:
                sa, sb = per_seed(payload, a), per_seed(payload, b)
                diffs = [sa[s] - sb[s] for s in sorted(sa) if s in sb]
                row[f"{a}-{b}"] = {"per_seed": diffs, "mean": float(np.mean(diffs))}
        row["context"] = _context_classes(payload)
        rows.append(row)
    return rows


def _context_classes(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """Mean IoU (over seeds, then over classes) of the context-dependent classes ("@plain",
    "@grainy") and of the other object classes, per model; None when the member has none."""
    names = payload.get("class_names", [])
    pair = [i for i, n in enumerate(names) if "@" in n]
    if not pair:
        return None
    other = [i for i, n in enumerate(names) if i > 0 and "@" not in n]
    out = {}
    for model in payload["models"]:
        iou = payload["per_model"][model]["IoU_mean"]

        def mean(ids: list[int], iou: list = iou) -> float | None:
            vals = [iou[i] for i in ids if iou[i] is not None]
            return float(np.mean(vals)) if vals else None

        out[model] = {"pair": mean(pair), "other": mean(other)}
    return out


def summarize_final(
    compares: Mapping[int, Mapping[str, Any]], members: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Family-wide differences (members as units), per-member rows, and what predicts them."""
    if not compares:
        return {}
    rows = _member_rows(compares)
    out: dict[str, Any] = {"members": rows, "mIoU": {}, "differences": {}, "predictors": {}}
    for model in rows[0]["mIoU"]:
        out["mIoU"][model] = t_interval([r["mIoU"][model] for r in rows if model in r["mIoU"]])
    for a, b in PAIRS:
        key = f"{a}-{b}"
        have = [r for r in rows if key in r]
        if not have:
            continue
        deltas = [r[key]["mean"] for r in have]
        within = [np.std(r[key]["per_seed"], ddof=1) for r in have if len(r[key]["per_seed"]) > 1]
        out["differences"][key] = {
            **t_interval(deltas),
            "positive_members": int(sum(d > 0 for d in deltas)),
            "all_runs": t_interval([d for r in have for d in r[key]["per_seed"]]),
            "seed_sd_within_member": float(np.sqrt(np.mean(np.square(within)))) if within else None,
        }
        out["predictors"][key] = _predictors(have, key, members)
    out["context_classes"] = _context_summary(rows)
    return out


def _predictors(
    rows: Sequence[Mapping[str, Any]], key: str, members: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any]:
    """Per scene property: Spearman's ρ and the OLS slope (95 % CI) of the member difference on
    it, and the mean difference in the members below and at/above its median."""
    y = np.array([r[key]["mean"] for r in rows])
    out = {}
    for name in REGRESSORS:
        if any(name not in members[r["member"]] for r in rows):
            continue
        x = np.array([float(members[r["member"]][name]) for r in rows])
        if len(set(x)) < 2 or len(y) < 3:
            continue
        rho, p_rho = stats.spearmanr(x, y)
        fit = stats.linregress(x, y)
        half = float(stats.t.ppf(0.975, len(y) - 2)) * fit.stderr
        cut = float(np.median(x))
        high, low = y[x >= cut], y[x < cut]
        if len(low) == 0:  # a property whose median is its minimum: split above it instead
            high, low = y[x > cut], y[x <= cut]
        welch = (
            stats.ttest_ind(high, low, equal_var=False) if min(len(high), len(low)) > 1 else None
        )
        out[name] = {
            "spearman_rho": float(rho),
            "spearman_p": float(p_rho),
            "slope": float(fit.slope),
            "slope_ci95": [float(fit.slope - half), float(fit.slope + half)],
            "slope_p": float(fit.pvalue),
            "median": cut,
            "mean_low": float(low.mean()) if len(low) else None,
            "mean_high": float(high.mean()) if len(high) else None,
            "n_low": len(low),
            "n_high": len(high),
            "welch_p": float(welch.pvalue) if welch is not None else None,
        }
    return out


def _context_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Within members that have context pairs: SA − FCN (and SA − SE) on the pair classes
    against the same difference on the other object classes, paired by member."""
    out = {}
    for a, b in PAIRS:
        gap_pair, gap_other = [], []
        for r in rows:
            c = r["context"]
            if not c or a not in c or b not in c:
                continue
            if None in (c[a]["pair"], c[b]["pair"], c[a]["other"], c[b]["other"]):
                continue
            gap_pair.append(c[a]["pair"] - c[b]["pair"])
            gap_other.append(c[a]["other"] - c[b]["other"])
        if gap_pair:
            out[f"{a}-{b}"] = {
                "pair_classes": t_interval(gap_pair),
                "other_classes": t_interval(gap_other),
                "pair_minus_other": t_interval(np.subtract(gap_pair, gap_other).tolist()),
            }
    return out


def write_plots(study: Mapping[str, Any], to: Path) -> list[Path]:
    """``differences.png`` (per-member SA − FCN and SA − SE), ``predictors.png`` (SA − FCN
    against each scene property) and ``screen.png`` (the recipe variants)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    final = study.get("final") or {}
    if final.get("members"):
        rows = final["members"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
        for ax, (a, b) in zip(axes, PAIRS, strict=True):
            key = f"{a}-{b}"
            have = [r for r in rows if key in r]
            for i, r in enumerate(have):
                ax.scatter([i] * len(r[key]["per_seed"]), r[key]["per_seed"], s=12, c="0.6")
                ax.scatter([i], [r[key]["mean"]], s=36, c="C0" if r[key]["mean"] > 0 else "C3")
            d = final["differences"].get(key, {})
            if d.get("ci95"):
                ax.axhspan(*d["ci95"], color="C0", alpha=0.15, label="mean, 95 % CI (members)")
                ax.axhline(d["mean"], color="C0")
            ax.axhline(0, color="k", lw=0.8)
            ax.set_xticks(range(len(have)), [str(r["member"]) for r in have])
            ax.set_xlabel("family member")
            ax.set_title(f"{a} − {b}: val mIoU")
            ax.legend(loc="lower right", fontsize=8)
        axes[0].set_ylabel("difference (dots: seeds; big: mean)")
        written.append(_save(fig, to / "differences.png"))
        key = "sanet-fcn"
        have = [r for r in rows if key in r]
        fig, axes = plt.subplots(2, 4, figsize=(12, 5.2), sharey=True)
        for ax, name in zip(axes.flat, REGRESSORS, strict=True):
            x = [study["members"][r["member"]][name] for r in have]
            ax.scatter(x, [r[key]["mean"] for r in have], s=18)
            ax.axhline(0, color="k", lw=0.8)
            p = final["predictors"].get(key, {}).get(name)
            ax.set_title(f"{name} (ρ={p['spearman_rho']:+.2f})" if p else name, fontsize=9)
        axes[0][0].set_ylabel("sanet − fcn")
        axes[1][0].set_ylabel("sanet − fcn")
        written.append(_save(fig, to / "predictors.png"))
    screen = study.get("screen") or {}
    if screen:
        names = list(screen)
        fig, ax = plt.subplots(figsize=(9, 3.4))
        for k, model in enumerate(("sanet", "fcn")):
            for i, name in enumerate(names):
                vals = list(screen[name][model]["mIoU"].values())
                xs = [i + (k - 0.5) * 0.3] * len(vals)
                ax.scatter(xs, vals, s=12, c=f"C{k}", label=model if i == 0 else None)
                if vals:
                    ax.plot([xs[0] - 0.1, xs[0] + 0.1], [np.mean(vals)] * 2, c=f"C{k}")
        ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        ax.set_ylabel("val mIoU (dots: screening members)")
        ax.legend(fontsize=8)
        written.append(_save(fig, to / "screen.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _f(value: Any, digits: int = 3, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def markdown_tables(study: Mapping[str, Any]) -> str:
    """The tables docs/learning.md quotes, rendered from ``study.json`` (``report`` writes them
    to ``tables.md`` next to the plots, so the doc's numbers can be regenerated)."""
    final, out = study.get("final") or {}, []
    if final:
        out += ["| difference | members | mean | 95 % CI (members) | p | members > 0 | seed sd |"]
        out += ["|---|---|---|---|---|---|---|"]
        for key, d in final["differences"].items():
            ci = d.get("ci95") or [None, None]
            out.append(
                f"| {key.replace('-', ' − ')} | {d['n']} | {_f(d['mean'], sign=True)} | "
                f"[{_f(ci[0], sign=True)}, {_f(ci[1], sign=True)}] | {_f(d.get('p_value'))} | "
                f"{d['positive_members']} of {d['n']} | {_f(d.get('seed_sd_within_member'))} |"
            )
        out += ["", "| model | mean val mIoU over members | 95 % CI |", "|---|---|---|"]
        for model, d in final["mIoU"].items():
            ci = d.get("ci95") or [None, None]
            out.append(f"| {model} | {_f(d['mean'])} | [{_f(ci[0])}, {_f(ci[1])}] |")
        head = "| member | classes | context pairs | colour info | sanet | fcn | sanet_se |"
        out += ["", head + " SA − FCN | SA − SE |", "|---" * 9 + "|"]
        for r in final["members"]:
            p = study["members"][r["member"]] if "members" in study else {}
            m = r["mIoU"]
            out.append(
                f"| {r['member']} | {p.get('num_classes', '–')} | "
                f"{p.get('context_pairs', '–')} | {_f(p.get('colour_info'), 2)} | "
                f"{_f(m.get('sanet'))} | {_f(m.get('fcn'))} | {_f(m.get('sanet_se'))} | "
                f"{_f(r.get('sanet-fcn', {}).get('mean'), sign=True)} | "
                f"{_f(r.get('sanet-sanet_se', {}).get('mean'), sign=True)} |"
            )
        preds = final["predictors"].get("sanet-fcn", {})
        if preds:
            out += [
                "",
                "| property (SA − FCN) | Spearman ρ (p) | slope, 95 % CI | below / at or "
                "above the median |",
                "|---|---|---|---|",
            ]
            for name, p in preds.items():
                ci = p["slope_ci95"]
                out.append(
                    f"| {name} | {p['spearman_rho']:+.2f} ({p['spearman_p']:.2f}) | "
                    f"{p['slope']:+.3g} [{ci[0]:+.3g}, {ci[1]:+.3g}] | "
                    f"{_f(p['mean_low'], sign=True)} (n={p['n_low']}) / "
                    f"{_f(p['mean_high'], sign=True)} (n={p['n_high']}) |"
                )
    screen = study.get("screen") or {}
    if screen:
        out += ["", "| variant (screening members) | sanet | Δ vs base | fcn | Δ vs base |"]
        out += ["|---|---|---|---|---|"]
        for name, row in screen.items():
            cells = []
            for model in ("sanet", "fcn"):
                vals = ", ".join(f"{v:.3f}" for v in row[model]["mIoU"].values()) or "–"
                cells += [vals, _f(row[model]["delta_vs_base"], sign=True)]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
