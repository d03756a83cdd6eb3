"""GPU checks (run with `pytest -m gpu` on a CUDA machine; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

import sanet
from sanet.training import engine

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_train_step_on_cuda(amp: str) -> None:
    device = torch.device("cuda")
    model = sanet.build_model("sanet", backbone="resnet50s", num_classes=21).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    x = torch.randn(4, 3, 256, 256, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 21, (4, 256, 256), device=device)
    y[:, :8] = 255
    for _ in range(3):
        result = engine.train_step(model, sanet.SANetLoss(), [(x, y)], opt, scaler, amp=amp)
    assert bool(result.finite)


def test_cuda_eval_matches_cpu() -> None:
    model = sanet.build_model("sanet", backbone="resnet18d", num_classes=5).eval()
    x = torch.randn(1, 3, 97, 65)
    with torch.no_grad():
        cpu = model(x)["out"]
        gpu = model.cuda()(x.cuda())["out"].cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
