"""The verbs' results in words and tables, as people read them: what the ``sanet`` command
prints, and what a notebook can display (``rich`` renderables and plain lines; nothing here
prints). Each function takes a verb's result (or its report dict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from sanet.data.check import ERROR_KINDS


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# calibrate, audit-labels, export
# ---------------------------------------------------------------------------------------------


def calibration_lines(result: Any) -> list[str]:
    """What :func:`sanet.calibrate` fitted, the threshold and its guarantee, the per-image view,
    the files."""
    record = result.record
    lines = [
        f"T = {result.temperature:.4g}: ECE {result.ece_before:.4f} → {result.ece_after:.4f}, "
        f"NLL {result.nll_before:.4f} → {result.nll_after:.4f} "
        f"({record['images']} images, {record['labelled_pixels']} labelled pixels)"
    ]
    risk = record.get("risk")
    if risk:
        lines += _risk_lines(risk)
    lines.append(f"Wrote {result.report}, {result.plot}; stored in {result.stored}")
    if result.mirror is not None:
        lines.append(
            f"Also rewrote {result.mirror}: the model's own calibration folder describes the "
            "calibration it carries."
        )
    return lines


def _risk_lines(risk: dict[str, Any]) -> list[str]:
    """The threshold, its guarantee and assumption, the class thresholds, the worst images."""
    how = (
        f"learn then test: {risk['exceeding_images']} of the {risk['images']} images exceed "
        f"{risk['alpha']} at it, p = {risk['p_value']:.3g}"
        if risk.get("mode") == "per_image"
        else f"conformal risk control over {risk['images']} images"
    )
    lines = [
        f"unsure below confidence {risk['threshold']:.6g}: {risk['guarantee']} ({how}; "
        f"{risk['unsure_share']:.1%} of this split's labelled pixels are unsure). The guarantee "
        f"{risk['assumption']}."
    ]
    for c in risk.get("per_class") or []:
        at = "every pixel unsure" if c["threshold"] is None else f"{c['threshold']:.6g}"
        lines.append(f"  {c['class']}: unsure below {at} ({c['images']} images predict it)")
    view = risk.get("per_image")
    if view:
        q = view["quantiles"]
        worst = ", ".join(f"{Path(w['image']).name} {w['risk']:.3f}" for w in view["worst"][:3])
        lines.append(
            f"per image at the threshold: median {q['0.5']:.4f}, 90 % {q['0.9']:.4f}, max "
            f"{view['max']:.4f}; {view['share_above_alpha']:.1%} of the images above "
            f"{risk['alpha']}; worst: {worst}"
        )
    return lines


def audit_lines(result: Any, shown: int = 5) -> list[str]:
    """The most suspicious images of :func:`sanet.audit_labels` and the files written."""
    lines = [agreement_line(result.audit)]
    for entry in result.images[:shown]:
        lines.append(f"{entry['score']:.4f}  {entry['image']}  {suspicion(entry)}")
    return [*lines, f"Wrote {result.report} and {result.suspects}"]


def agreement_line(audit: dict[str, Any]) -> str:
    """How far the auditing model agrees with the labels it audits (the gate's statistic, over
    every scored image): a low agreement means its suspicions say more about the model."""
    found = [audit["agreement"]] if audit.get("agreement") else []
    found += [run["agreement"] for run in audit.get("runs") or [] if run.get("agreement")]
    if not found:
        return "agreement with the labels: not recorded"
    words = ", ".join(f"mIoU {a['mIoU']:.3f} on {a['images']} images" for a in found)
    what = "fold models'" if audit.get("runs") else "model's"
    return f"the {what} agreement with the labels: {words}"


def suspicion(entry: dict[str, Any]) -> str:
    """What made an audit entry suspicious: its shifted object when the shift scored it, else
    its top region (``""`` for neither)."""
    shifts, regions = entry.get("shifts") or [], entry["regions"]
    if shifts and entry.get("shift_score", 0.0) >= entry.get("region_score", 0.0):
        s = shifts[0]
        dx, dy = s["offset"]
        return (
            f"shifted boundary: {s['label']} fits the model {dx:+d}, {dy:+d} px away "
            f"({s['explained']} px explained)"
        )
    top = regions[0] if regions else None
    return f"{top['kind']}: {top['label']} → {top['predicted']}, {top['pixels']} px" if top else ""


def export_lines(result: Any) -> list[str]:
    """What :func:`sanet.export` checked (INT8 gate, parity) and wrote."""
    lines = [int8_line(result.quantization)] if result.quantization is not None else []
    if result.parity:
        checked = ", ".join(f"{h}×{w}" for h, w in (r["size"] for r in result.parity))
        worst = max(r["max_abs_diff"] for r in result.parity)
        agree = min(r["argmax_agreement"] for r in result.parity)
        lines.append(
            f"check: onnxruntime = PyTorch at {checked} (max |Δ logits| {worst:.2g}, "
            f"argmax agreement {agree:.2%})"
        )
    mb, classes = result.size_bytes / 1e6, len(result.class_names)
    return [*lines, f"Wrote {result.path} ({mb:.1f} MB, opset {result.opset}, {classes} classes)"]


def int8_line(q: dict[str, Any]) -> str:
    """One line of what the INT8 gate measured (the file's ``quantization`` record)."""
    m, s, cpu = q["miou"], q["speedup"], q["cpu"]
    flags = [f for f in ("avx512_vnni", "avx_vnni", "amx") if cpu.get(f)] or ["no VNNI"]
    se = f" ± {m['drop_se']:.4f} (SE)" if m.get("drop_se") is not None else ""
    return (
        f"int8 (quantized from the fp32 graph checked below): mIoU {m['fp32']:.4f} (fp32) → "
        f"{m['int8']:.4f} (int8), drop {m['drop']:.4f}{se} ≤ "
        f"{m['max_drop']:g} on {m['data'].rstrip(':')} {m['split']} ({m['images']} images); "
        f"{s['ratio']:.2f}× the fp32 speed at {s['size'][0]}×{s['size'][1]}, {s['threads']} "
        f"threads ({cpu['name']}: {', '.join(flags)}; {q['activations']} activations, "
        f"reduce_range {q['reduce_range']})"
    )


# ---------------------------------------------------------------------------------------------
# compare, check-data
# ---------------------------------------------------------------------------------------------


def compare_tables(payload: dict[str, Any]) -> list[Table]:
    """Table 3 of a comparison (mean ± std, per seed, paired difference to the first model)
    and the per-class IoU, mean over seeds."""
    models, first = payload["models"], payload["models"][0]
    table = Table(title=f"val mIoU of the final weights, seeds {payload['seeds']}")
    titles = ("model", "n", "mIoU mean ± std", "per seed", f"Δ vs {first} [95% CI]", "p")
    for col in (*titles, "s / run"):
        table.add_column(col, justify="left" if col in ("model", "per seed") else "right")
    for model in models:
        s, d = payload["per_model"][model], payload["paired"].get(model)
        diff, p = "—", "—"
        if d is not None:
            ci = d["ci95"]
            diff = f"{d['mean']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            p = f"{d['p_value']:.3f}" if d["p_value"] is not None else "—"
        spread = f" ± {s['mIoU_std']:.4f}" if s["n"] > 1 else " (one seed: no spread)"
        seeds = " ".join(f"{v:.3f}" for v in s["mIoU"])
        mean = f"{s['mIoU_mean']:.4f}{spread}"
        table.add_row(model, str(s["n"]), mean, seeds, diff, p, f"{s['seconds_mean']:.0f}")
    per_class = Table(title="per-class IoU, mean over seeds")
    per_class.add_column("class")
    for model in models:
        per_class.add_column(model, justify="right")
    for k, name in enumerate(payload["class_names"]):
        values = [payload["per_model"][m]["IoU_mean"][k] for m in models]
        per_class.add_row(name, *("—" if v is None else f"{v:.4f}" for v in values))
    return [table, per_class]


def check_report(report: dict[str, Any], show: int = 20) -> list[Any]:
    """:func:`sanet.check_data`'s report: the checks with their counts, the first ``show``
    issues, the class frequencies with suggested weights, the verdict."""
    summary = Table(title=f"{report['dataset']}: {report['num_pairs']} pairs")
    summary.add_column("check")
    summary.add_column("count", justify="right")
    for kind, n in report["issue_counts"].items():
        style = "red" if n and kind in ERROR_KINDS else ("yellow" if n else "")
        summary.add_row(kind, f"[{style}]{n}[/{style}]" if style else str(n))
    out: list[Any] = [summary]
    for it in report["issues"][:show]:
        colour = "red" if it["severity"] == "error" else "yellow"
        out.append(f"[{colour}]{it['kind']}[/{colour}] {it['message']}")
    if len(report["issues"]) > show:
        out.append(f"... and {len(report['issues']) - show} more in the JSON report")
    classes = Table(title="class frequencies (valid pixels)")
    for col in ("id", "class", "images", "pixels %", "weight"):
        classes.add_column(col, justify="left" if col == "class" else "right")
    rows = zip(
        report["class_names"],
        report["class_images"],
        report["class_frequency"],
        report["suggested_class_weights"],
        strict=True,
    )
    for k, (name, images, freq, weight) in enumerate(rows):
        classes.add_row(str(k), name, str(images), f"{100 * freq:.2f}", f"{weight:.3f}")
    status = "[red]errors found[/red]" if report["errors"] else "[green]no errors[/green]"
    return [
        *out,
        classes,
        f"ignore (255): {100 * report['ignore_share']:.2f} % of the pixels",
        f"{status}: {report['errors']} errors, {report['warnings']} warnings",
    ]


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------

#: The bench table's columns after model and mode: (title, row key, digits).
BENCH_COLUMNS = (
    ("GFLOPs/img", "gflops_per_image", 1),
    ("img/s", "images_per_s", 2),
    ("ms/batch", "latency_ms", 1),
    ("first call s", "first_step_s", 1),
    ("TFLOP/s", "tflops", 3),
    ("roof TFLOP/s", "roof_tflops", 3),
    ("× roof", "roof_fraction", 2),
    ("peak GB", "peak_memory_gb", 2),
    ("× first", "ratio", 2),
    ("× first per FLOP", "ratio_per_flop", 2),
)


def bench_header(result: Any, models: list[str]) -> str:
    """The line above :func:`sanet.api.bench.bench`'s table: where, what and how."""
    env, settings = result.environment, result.settings
    if result.mode == "eval":
        h, w = settings.image
        what = f"one {w}×{h} image, {settings.protocol}, {settings.window_batch} windows/forward"
    else:
        what = f"{settings.size}×{settings.size}, batch {settings.batch}"
    files = sum(m.startswith("onnx:") for m in models)  # exported files keep their own K
    classes = f"{settings.classes} classes" + (" (onnx: files: their own)" if files else "")
    if models and files == len(models):
        classes = "classes: each file's own"
    layout = "channels_last" if settings.channels_last else "contiguous"
    compiled = f"compile {settings.compile}" if settings.compile else "eager"
    return (
        f"{env['device_name']} ({env['device']}), torch {env['torch']}, {env['threads']} threads, "
        f"load {env['load_average_1min']}; {what}; {classes}, amp {settings.amp}, {layout}, "
        f"{compiled}; {settings.steps} timed calls after {settings.warmup} + 1 untimed"
    )


def bench_table(rows: list[dict]) -> Table:
    """The table of :func:`~sanet.experiments.bench.run_bench` rows."""
    table = Table(title="sanet bench (ratios: to the first model of each mode)")
    for title in ("model", "mode", *(c[0] for c in BENCH_COLUMNS)):
        table.add_column(title, justify="left" if title in ("model", "mode") else "right")
    for r in rows:
        table.add_row(r["model"], r["mode"], *(_fmt(r.get(key), n) for _, key, n in BENCH_COLUMNS))
    return table


def resize_table(rows: list[dict], settings: Any) -> Table:
    """The table of :func:`~sanet.experiments.bench.resize_timings` rows."""
    small = -(-settings.size // 8)
    table = Table(
        title=f"bilinear ({settings.batch}, {settings.classes}, {small}, {small}) → "
        f"{settings.size}×{settings.size}, amp {settings.amp}"
    )
    for name in ("method", "pass", "ms"):
        table.add_column(name, justify="right" if name == "ms" else "left")
    for r in rows:
        table.add_row(r["method"], r["pass"], _fmt(r["ms"], 1))
    return table


# ---------------------------------------------------------------------------------------------
# weights import
# ---------------------------------------------------------------------------------------------


def weights_lines(result: Any) -> list[str]:
    """What :func:`sanet.import_weights` checked and wrote."""
    r, check = result.record, result.record["check"]
    return [
        f"{r['source']}: {result.tensors} tensors mapped onto timm's {result.arch}, all matched "
        f"(sha256 {r['sha256'][:12]}…)",
        f"check: {check['image']} → class {check['label']} p={check['prob']:.3f} "
        f"(top 5 {check['top5']})",
        f"normalisation mean {r['mean']} std {r['std']}",
        f"Wrote {result.out}; use it with model.backbone={result.arch} "
        f"model.pretrained_backbone={result.out}",
    ]


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------

BACKEND_COLUMNS = (
    ("ms wall", "latency_ms", 1),
    ("ms CPU", "cpu_ms", 1),
    ("img/s", "images_per_s", 1),
    ("× fp32", "speedup", 2),
    ("× CPU", "speedup_cpu", 2),
    ("= fp32", "agreement", 4),
    ("mIoU", "miou", 4),
)


def _drop(r: dict[str, Any]) -> str:
    if r.get("drop") is None:
        return "—"
    se = f" ± {r['drop_se']:.4f}" if r.get("drop_se") is not None else ""
    return f"{r['drop']:.4f}{se}"


def backend_lines(result: Any) -> list[str]:
    """:func:`sanet.compare_backends`' result: where, one aligned line per backend (plain text:
    wider than a terminal's 80 columns), the choice and the record."""
    report = result.report
    env = report["environment"]
    gate = report["gate"]
    rule = f"mIoU drop ≤ {gate['max_miou_drop']} on {gate['data']}" if gate["data"] else "none"
    lines = [
        f"{env['device_name']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"{report['threads']} thread{'s' * (report['threads'] != 1)}, load "
        f"{env['load_average_1min']}; {report['images']} "
        f"images, {report['rounds']} alternated rounds (median per image); int8 kernels: "
        f"{env['int8_path']['int8_kernels']}; gate: {rule}",
        f"{'backend':<28}"
        + "".join(f"{t:>9}" for t, _, _ in BACKEND_COLUMNS)
        + f"  {'drop ± SE':<17} gate",
    ]
    for r in report["rows"]:
        verdict = {True: "pass", False: "refused", None: "—"}[r["passed"]]
        verdict = "reference" if r["name"] == "torch-fp32" else verdict
        name = r["name"] + (" (emulated)" if r.get("note") else "")
        cells = "".join(f"{_fmt(r.get(k), n):>9}" for _, k, n in BACKEND_COLUMNS)
        lines.append(f"{name:<28}{cells}  {_drop(r):<17} {verdict}")
    lines += [f"note: {r['name']}: {r['note']}" for r in report["rows"] if r.get("note")]
    choice = result.choice
    lines.append(f"serve --backend auto would choose {choice.backend}: {choice.reason}")
    if result.json is not None:
        reads = (
            " (sanet serve --backend auto reads it)" if result.json.name == "backends.json" else ""
        )
        lines.append(f"Wrote {result.json}{reads}")
    return lines
