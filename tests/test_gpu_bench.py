"""bench/gpu_triton.py: what runs without a GPU (the plan, the table, the targets), and a smoke
run of the whole script on CPU tensors under Triton's interpreter."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from bench import gpu_triton
from hsa_ref import Hierarchy


def test_dry_run_prints_the_plan(capsys):
    assert gpu_triton.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "262,144" in out
    assert "b=64" in out
    assert "16 heads" in out
    assert gpu_triton.main(["--dry-run", "--quick"]) == 0
    assert "262,144" not in capsys.readouterr().out


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        gpu_triton.parse_args(["--sizes", "0"])
    with pytest.raises(SystemExit):
        gpu_triton.parse_args(["--branching", "1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_no_gpu_is_a_clear_failure(capsys):
    assert gpu_triton.main(["--quick"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_table_and_targets():
    rows = [
        gpu_triton.Row(b=64, n=262144, floor=1.0, triton_fwd=1.2, triton_fwd_bwd=3.0,
                       sdpa_fwd=500.0, sdpa_fwd_bwd=1500.0),
        gpu_triton.Row(b=16, n=4096, floor=0.02, triton_fwd=0.1, triton_fwd_bwd=0.2,
                       sdpa_fwd=0.05, sdpa_fwd_bwd=0.5),
    ]  # fmt: skip
    text = gpu_triton.table(rows)
    assert text.count("\n") == 3
    assert "| 64 | 262,144 | 1 | 1.2 | 1.2 |" in text
    verdicts = dict(gpu_triton.targets(rows))
    assert list(verdicts.values()) == [True, False, True]
    assert all(v is None for _, v in gpu_triton.targets([gpu_triton.Row(b=16, n=64)]))
    assert math.isnan(gpu_triton.ratio(1.0, math.nan))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run is for GPU-less machines")
def test_smoke_run_on_cpu(capsys, tmp_path):
    from hsa_fast.triton import triton_interpreted

    if not triton_interpreted():
        pytest.skip("TRITON_INTERPRET is not set")
    h = Hierarchy.from_nested([[0, 1], [2, [3, 4]], 5])
    check = gpu_triton.Check("small", h, torch.float32, "distance", positions=True, gradients=True)
    assert gpu_triton.check_correctness("cpu", [check]) == []
    assert len(gpu_triton.correctness_checks(quick=True)) < len(gpu_triton.correctness_checks())
    out_json = tmp_path / "rows.json"
    argv = ["--device", "cpu", "--sizes", "64", "--branching", "4", "--heads", "1", "--dim", "16"]
    argv += ["--warmup", "0", "--reps", "1", "--skip-checks", "--json", str(out_json)]
    assert gpu_triton.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 4 | 64 |" in out
    assert "target:" in out
    assert out_json.read_text().count('"triton_fwd"') == 1
