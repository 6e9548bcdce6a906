"""bench/avx2only.sh, the AVX2-only view of the CPU that docs/benchmarks.md measures AVX2 machines' kernels with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from machine import cpu_flag_set  # bench/machine.py

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "avx2only.sh"
# What the libraries see: numpy's CPU dispatch, and onnxruntime's int8 convolution of 64 channels of 255 x 127 (a
# 1x1 QLinearConv whose output scale maps the exact sum, 2,072,640, to 200; summing in 16 bits, as AVX2 kernels
# without VNNI do, clips it to about half).
PROBE = """
import numpy as np, onnxruntime
from numpy._core._multiarray_umath import __cpu_features__ as cpu
from onnx import TensorProto, helper, numpy_helper
k = 64
init = [numpy_helper.from_array(np.full((1, k, 1, 1), 127, np.int8), "w"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(255 * 127 * k / 200, np.float32), "ys"),
        numpy_helper.from_array(np.array(0, np.uint8), "zu"), numpy_helper.from_array(np.array(0, np.int8), "zs")]
conv = helper.make_node("QLinearConv", ["x", "one", "zu", "w", "one", "zs", "ys", "zu"], ["y"])
graph = helper.make_graph([conv], "probe", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k, 1, 1])],
                          [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1, 1, 1])], init)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
print(cpu["AVX512F"], cpu["AVX2"], session.run(None, {"x": np.full((1, k, 1, 1), 255, np.uint8)})[0].item())
"""


def test_the_view_hides_avx512_and_vnni_from_the_libraries_or_says_it_cannot(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the library is built afresh from bench/avx2only.c
    seen = subprocess.run([SCRIPT, sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    flags = cpu_flag_set() or set()  # none without Linux's x86 flags: the script says it cannot
    if "cpuid_fault" not in flags:
        assert seen.returncode == 2 and "no CPUID faulting" in seen.stderr, seen
        return
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.split()[:2] == ["False", "True"]  # no AVX-512, AVX2 still
    assert int(seen.stdout.split()[2]) < 110  # the 16-bit sums of an AVX2 CPU without VNNI
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # the CPU as it is, even inside a view
    native = subprocess.run([sys.executable, "-c", PROBE], env=plain, capture_output=True, text=True, timeout=120)
    assert native.returncode == 0, native.stderr
    has_vnni = bool(flags & {"avx512_vnni", "avx_vnni"})
    assert native.stdout.split()[0] == str("avx512f" in flags)
    assert (int(native.stdout.split()[2]) == 200) == has_vnni, native.stdout  # with VNNI: the exact sum
