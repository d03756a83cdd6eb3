"""``amp="auto"`` (sanet.devices.choose_precision) and the roof of ``sanet bench`` (issue 35):
which precision a machine gets, that bf16 masks agree with float32 ones, that the roof is a
real measurement and each row's share of it is computed right. Nothing here assumes an
instruction set: the accuracy checks always run, the speed check skips on CPUs without bf16
units."""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import tiny_recipe

import sanet
from sanet.api.common import protocol_of
from sanet.config import TrainConfig, load_config
from sanet.data.transforms import normalize_image
from sanet.devices import choose_precision, cpu_bf16_units, kernel_family
from sanet.errors import UsageError
from sanet.experiments import measure
from sanet.experiments.measure import gemm_roof
from sanet.inference.protocol import EvalProtocol
from sanet.inference.runs import inference_precision
from sanet.training.trainer import Trainer

AMX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ZEN5 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
#: bf16 autocast may flip the arg-max where two classes nearly tie: the share of pixels whose
#: bf16 class must equal the float32 one (we measured 0.9991 and 0.9996 on the two images of
#: _decisive_model; docs/benchmarks.md, CPU precision).
MIN_AGREEMENT = 0.99


def _this_cpu_has_bf16_units() -> bool:
    """Read /proc/cpuinfo here, independently of sanet.devices."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return "amx_bf16" in flags or "avx512_bf16" in flags


@pytest.mark.parametrize(
    ("cpuinfo", "amp", "channels_last", "units"),
    [
        (AMX, "bf16", True, "AMX"),
        (ZEN5, "bf16", True, "AVX512_BF16"),
        (AVX2, "none", False, None),
        ("", "none", False, None),
    ],
)
def test_auto_picks_bf16_and_channels_last_only_where_the_cpu_has_bf16_units(
    cpuinfo: str, amp: str, channels_last: bool, units: str | None
) -> None:
    chosen = choose_precision("auto", "cpu", cpuinfo=cpuinfo)
    assert (chosen.amp, chosen.channels_last, chosen.asked) == (amp, channels_last, "auto")
    assert cpu_bf16_units(cpuinfo) == units
    assert ("auto: " in chosen.describe()) and chosen.reason in chosen.describe()
    level = torch.backends.cpu.get_cpu_capability()
    assert kernel_family("bf16", cpuinfo) == (f"{units} bf16 + {level}" if units else level)
    assert kernel_family("none", cpuinfo).startswith(level)


def test_explicit_amp_is_taken_as_given_and_a_wrong_one_refused() -> None:
    for amp in ("none", "bf16", "fp16"):
        chosen = choose_precision(amp, "cpu", channels_last=False, cpuinfo=AMX)
        assert (chosen.amp, chosen.channels_last) == (amp, False)  # AMX does not override it
    with pytest.raises(UsageError, match="auto, none, bf16, fp16"):
        choose_precision("fp8", "cpu")


def test_auto_is_the_default_of_new_recipes_and_the_shipped_ones_pin_theirs() -> None:
    assert TrainConfig().amp == "auto"
    assert load_config("src/sanet/configs/demo.yaml").train.amp == "none"
    assert load_config("src/sanet/configs/sanet_r50s_context.yaml").train.amp == "bf16"


def test_an_auto_run_records_what_it_chose_in_its_config(tmp_path: Path) -> None:
    cfg = load_config(None, tiny_recipe(train__amp="auto", train__max_steps=1))
    trainer = Trainer(cfg, tmp_path / "run")
    expected = "bf16" if _this_cpu_has_bf16_units() else "none"
    saved = load_config(tmp_path / "run" / "config.yaml").train
    assert (saved.amp, trainer.precision.amp, trainer.val_protocol.amp) == (expected,) * 3
    assert saved.channels_last == (expected == "bf16") and trainer.precision.asked == "auto"
    assert cfg.train.amp == "auto"  # the caller's config is not changed


def _decisive_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny SANet fitted for 8 steps to two 48 px images whose classes show in the pixels, and
    the images: its probabilities are decisive (random weights give near-uniform ones, whose
    arg-max any rounding flips)."""
    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone="resnet10t", num_classes=4)
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    masks = torch.zeros(2, 48, 48, dtype=torch.long)
    masks[:, :, 24:] = 1
    masks[0, 8:24, 8:24], masks[1, 30:44, 4:20] = 2, 3
    images[masks[:, None].expand(-1, 3, -1, -1) == 2] //= 2
    images[:, 0][masks == 3] = 250
    x = normalize_image(images)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = sanet.SANetLoss()
    for _ in range(8):
        opt.zero_grad()
        loss_fn(model(x), masks)["loss"].backward()
        opt.step()
    return model, images


def test_bf16_channels_last_masks_agree_with_float32(one_thread: None) -> None:
    # always runs: bf16 autocast works (emulated) on CPUs without bf16 units too
    model, images = _decisive_model()
    fp32 = sanet.Predictor.from_model(model, protocol=EvalProtocol())
    masks = [fp32.predict(im) for im in images]
    bf16 = sanet.Predictor.from_model(model, protocol=EvalProtocol(amp="bf16", channels_last=True))
    conv = next(p for p in bf16.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    agree = np.mean([np.mean(bf16.predict(im) == m) for im, m in zip(images, masks, strict=True)])
    assert agree >= MIN_AGREEMENT, f"bf16 masks agree with float32 on {agree:.4f} of pixels"


@pytest.mark.slow
@pytest.mark.skipif(not _this_cpu_has_bf16_units(), reason="no bf16 units (AMX, AVX512_BF16)")
def test_bf16_channels_last_inference_is_faster_on_a_cpu_with_bf16_units(one_thread: None) -> None:
    torch.manual_seed(0)
    model = sanet.build_model("sanet", backbone="resnet18d", num_classes=7).eval()
    model_cl = sanet.build_model("sanet", backbone="resnet18d", num_classes=7).eval()
    model_cl.load_state_dict(model.state_dict())
    model_cl = model_cl.to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 96, 96)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def fp32() -> None:
        with torch.no_grad():
            model(x)

    def bf16() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model_cl(x_cl)

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(4):  # interleaved: a change of the machine's load reaches both
        for name, fn in (("fp32", fp32), ("bf16", bf16)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["fp32"][1:]) / statistics.median(times["bf16"][1:])
    assert ratio > 1.2, f"bf16 + channels-last only {ratio:.2f}× float32"


def test_inference_precision_keeps_an_onnx_file_in_its_own_precision() -> None:
    chosen = inference_precision("model.onnx", "auto", "cpu")
    assert (chosen.amp, chosen.channels_last) == ("none", False)


def test_a_verbs_amp_sets_the_protocols_precision_and_none_keeps_it() -> None:
    given = EvalProtocol(crop_size=64, stride=32, amp="fp16")
    assert protocol_of("model.onnx", given, "cpu", "none") is given
    changed = protocol_of("run", given, "cpu", "bf16")
    assert (changed.amp, changed.crop_size, changed.stride) == ("bf16", 64, 32)
    with pytest.raises(UsageError, match="amp"):
        sanet.Predictor("anything", protocol=given, amp="bf16")


def test_the_roof_is_a_finite_positive_measurement_cached_per_process() -> None:
    first = gemm_roof("cpu", torch.float32, size=128)
    assert math.isfinite(first) and first > 0
    assert gemm_roof("cpu", torch.float32, size=128) == first  # measured once
    assert math.isfinite(gemm_roof("cpu", torch.bfloat16, size=128))


def test_each_rows_share_of_the_roof_is_its_tflops_over_the_roofs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = []
    monkeypatch.setattr(measure, "gemm_roof", lambda device, dtype: asked.append(dtype) or 0.4)
    rows = [{"tflops": 0.1}, {"tflops": 0.35}, {"tflops": None}]
    record = measure.add_roof(rows, "cpu", torch.bfloat16)
    assert asked == [torch.bfloat16] and record["dtype"] == "bfloat16" and record["tflops"] == 0.4
    assert [r["roof_fraction"] for r in rows] == [pytest.approx(0.25), pytest.approx(0.875), None]
    assert all(r["roof_tflops"] == 0.4 for r in rows)


def test_bench_gives_every_counted_row_its_share_of_the_roof_of_its_dtype(one_thread: None) -> None:
    result = sanet.api.bench(
        "sanet:resnet10t",
        device="cpu",
        mode="infer",
        size=32,
        batch=1,
        classes=2,
        steps=1,
        warmup=0,
        amp="auto",
    )
    roof, row = result.environment["roof"], result.rows[0]
    assert roof["dtype"] == ("bfloat16" if _this_cpu_has_bf16_units() else "float32")
    assert result.report["settings"]["amp_asked"] == "auto"
    assert row["roof_fraction"] == pytest.approx(row["tflops"] / roof["tflops"])
    assert (
        "roof"
        not in sanet.api.bench(
            "sanet:resnet10t",
            device="cpu",
            mode="infer",
            size=32,
            batch=1,
            classes=2,
            steps=1,
            warmup=0,
            roof=False,
        ).environment
    )


def test_an_auto_run_resumes_here_and_a_changed_precision_is_refused(
    tmp_path: Path, one_thread: None
) -> None:
    cfg = load_config(None, tiny_recipe(train__amp="auto", train__max_steps=1))
    Trainer(cfg, tmp_path / "run").fit()
    resumed = Trainer(cfg, tmp_path / "run", resume=True)  # auto chooses the same here
    assert resumed.state.global_step == 1
    other = "none" if resumed.precision.amp == "bf16" else "bf16"  # what another CPU would pick
    changed = load_config(None, tiny_recipe(train__amp=other, train__max_steps=1))
    with pytest.raises(UsageError, match=r"train\.amp: "):
        Trainer(changed, tmp_path / "run", resume=True)


def test_evaluate_calibrate_and_predict_take_amp_log_it_and_record_it(
    tiny_checkpoint, tmp_path, caplog
) -> None:
    """``amp=`` on the three verbs (issue 35, part 1): the precision that ran, what was asked and
    why, logged once at start-up ("Precision: ...", as training logs it) and in the outputs."""
    import logging
    import shutil

    from _trust_scenes import write_folder_dataset

    (root := tmp_path / "data").mkdir()
    data = f"folder:{write_folder_dataset(root, 'abc')}"
    model = Path(shutil.copytree(tiny_checkpoint, tmp_path / "model"))
    units = cpu_bf16_units()
    with caplog.at_level(logging.INFO, logger="sanet"):
        ev = sanet.evaluate(model, data, amp="auto", out=tmp_path / "eval")
    written = json.loads((tmp_path / "eval/metrics.json").read_text())
    expected = {"amp": "bf16" if units else "none", "channels_last": bool(units), "asked": "auto"}
    for record in (ev.metrics["precision"], written["precision"]):
        assert {k: record[k] for k in expected} == expected and record["reason"]
    assert written["protocol"]["amp"] == expected["amp"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Precision:")]
    assert lines == [f"Precision: {choose_precision('auto', 'cpu').describe()}"]  # once
    cal = sanet.calibrate(model, data, amp="bf16", out=tmp_path / "cal", fit_images=3)
    assert cal.record["precision"] == {
        "amp": "bf16",
        "channels_last": False,
        "asked": "bf16",
        "reason": "as asked",
    }
    assert json.loads(cal.report.read_text())["precision"]["amp"] == "bf16"
    pred = sanet.predict_files(model, root / "images/val", tmp_path / "masks", amp="none")
    assert pred.precision == {
        "amp": "none",
        "channels_last": False,
        "asked": "none",
        "reason": "as asked",
    }
    assert len(pred.masks) == 3
