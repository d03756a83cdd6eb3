"""Which int8 kernels onnxruntime runs on this CPU: a float32 ``MatMul`` against a u8×s8
``MatMulInteger`` of the same shape, on one thread, calls alternated (docs/benchmarks.md,
"Backends side by side").

onnxruntime's MLAS picks its u8s8 GEMM once, by CPUID, and does not report it: AMX tiles where
the CPU has AMX-INT8 and the OS enabled the tile state, else AVX512-VNNI (``VPDPBUSDS``: 64
multiply-adds per instruction), else AVX2/AVX-512 without VNNI (``VPMADDUBSW`` + ``VPMADDWD``
+ ``VPADDD``: three instructions for the same 64). So the measured int8/fp32 rate tells the
path apart: about 4× the float32 FMA rate with VNNI (16 float32 FMAs per 512-bit
instruction), about 1.3–2× without, well above 4× with AMX.

    .venv/bin/python benchmarks/bench_int8_path.py --size 1024 --rounds 7      # one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def graphs(size: int) -> tuple[bytes, bytes]:
    """``A · B`` in float32 and as ``MatMulInteger`` (uint8 A, int8 B), B a constant."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    out = []
    for kind in ("fp32", "int8"):
        dtype = TensorProto.FLOAT if kind == "fp32" else TensorProto.UINT8
        a = helper.make_tensor_value_info("a", dtype, [size, size])
        if kind == "fp32":
            b = numpy_helper.from_array(rng.standard_normal((size, size)).astype(np.float32), "b")
            node = helper.make_node("MatMul", ["a", "b"], ["y"])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])
        else:
            b = numpy_helper.from_array(rng.integers(-128, 128, (size, size), np.int8), "b")
            node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
            y = helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])
        graph = helper.make_graph([node], kind, [a], [y], [b])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        out.append(model.SerializeToString())
    return out[0], out[1]


def main() -> None:
    import onnxruntime as ort

    from sanet.devices import cpu_features
    from sanet.exporting.backends import int8_kernels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = [ort.InferenceSession(g, options) for g in graphs(args.size)]
    rng = np.random.default_rng(1)
    inputs = [
        {"a": rng.standard_normal((args.size, args.size)).astype(np.float32)},
        {"a": rng.integers(0, 256, (args.size, args.size), np.uint8)},
    ]
    for s, x in zip(sessions, inputs, strict=True):
        s.run(None, x)  # the first call packs B
    wall: list[list[float]] = [[], []]
    cpu: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i, (s, x) in enumerate(zip(sessions, inputs, strict=True)):
            start, start_cpu = time.perf_counter(), time.process_time()
            s.run(None, x)
            wall[i].append(time.perf_counter() - start)
            cpu[i].append(time.process_time() - start_cpu)
    ops = 2 * args.size**3
    rates = {
        f"{kind}_{clock}_gops": round(ops / statistics.median(t) / 1e9, 1)
        for kind, w, c in (("fp32", wall[0], cpu[0]), ("int8", wall[1], cpu[1]))
        for clock, t in (("wall", w), ("cpu", c))
    }
    print(
        json.dumps(
            {
                "size": args.size,
                "threads": args.threads,
                "rounds": args.rounds,
                **rates,
                "int8_over_fp32_cpu": round(rates["int8_cpu_gops"] / rates["fp32_cpu_gops"], 2),
                "int8_over_fp32_wall": round(rates["int8_wall_gops"] / rates["fp32_wall_gops"], 2),
                "kernels_by_flags": int8_kernels(cpu_features()),
                "cpu": cpu_features()["name"],
                "onnxruntime": ort.__version__,
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
