"""Compile the Triton kernels for a GPU without one: Triton ships ``ptxas``.

``python -m bench.triton_compile`` runs a forward and a backward with every kernel launch
recorded instead of made, compiles each distinct launch for ``sm_90`` (H100, H200), as Triton's
JIT would specialise it, and prints what the compiler reports: registers per thread, bytes
spilled to local memory, shared memory, and whether the products use the tensor cores
(``wgmma``, ``mma``). The tests use it to catch kernels that Triton's interpreter runs but the
GPU compiler rejects or spills.

It needs the compiled kernels, so ``TRITON_INTERPRET`` must be unset when it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import torch

from hsa_fast import compile_hierarchy, triton_programme
from hsa_ref import Hierarchy

__all__ = ["CASES", "CompiledKernel", "compile_case"]

# name: (hierarchy, dtype, head dimension, energy, positions)
CASES: dict[str, tuple[Hierarchy, torch.dtype, int, str, bool]] = {
    "b64": (Hierarchy.balanced(4096, 64), torch.bfloat16, 64, "dot", False),
    "b16": (Hierarchy.balanced(4096, 16), torch.bfloat16, 64, "dot", False),
    "wide-float32": (
        Hierarchy.from_nested([list(range(150)), [150, [151, 152]], 153]),
        torch.float32,
        32,
        "distance",
        True,
    ),
    "mixed-float16": (
        Hierarchy.from_nested([[0, 1, 2], [3, [4, 5]], 6, [[7]], [8, [9, 10, 11]]]),
        torch.float16,
        16,
        "distance",
        True,
    ),
}

_TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
}
_SHOWN = ("W", "G", "BR", "NUM_CHUNKS", "BDK", "HAS_LEAVES", "HAS_FAMILIES", "HALF")


@dataclass(frozen=True)
class CompiledKernel:
    """One compiled launch: the kernel, its main constexprs and the compiler's report."""

    kernel: str
    constexprs: dict[str, Any]
    num_warps: int
    registers: int
    spill_bytes: int
    shared_bytes: int
    tensor_cores: str


def _signature(fn: Any, args: tuple, kwargs: dict) -> tuple[dict, dict, dict, dict]:
    """Signature, constexprs, attributes and options as Triton's JIT would derive them."""
    bound = dict(zip(fn.arg_names, args, strict=False))
    bound.update({k: v for k, v in kwargs.items() if k in fn.arg_names})
    options = {k: v for k, v in kwargs.items() if k not in fn.arg_names}
    signature, constexprs, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(fn.arg_names, fn.params, strict=True)):
        value = bound[name]
        integer = isinstance(value, int) and not isinstance(value, bool)
        if param.is_constexpr or (integer and value == 1 and not param.do_not_specialize):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + _TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif integer:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name}={value!r}")
    return signature, constexprs, attrs, options


def _ptxas_report(ptx: str, arch: int) -> tuple[int, int]:
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as fh:
            fh.write(ptx)
        report = subprocess.run(
            [ptxas, "-v", f"--gpu-name=sm_{arch}a", path, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    registers = re.search(r"Used (\d+) registers", report)
    spills = re.search(r"(\d+) bytes spill stores", report)
    if registers is None:
        raise RuntimeError(f"unexpected ptxas report:\n{report}")
    return int(registers.group(1)), int(spills.group(1)) if spills else 0


def compile_case(name: str, arch: int = 90) -> list[CompiledKernel]:
    """Compile every distinct kernel launch of a forward and backward of ``CASES[name]``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if triton_programme.triton_interpreted():
        raise RuntimeError("the kernels are interpreted: unset TRITON_INTERPRET and start again")
    h, dtype, d, energy, with_pos = CASES[name]
    q, k, v = (torch.randn(2, h.num_leaves, d).to(dtype) for _ in range(3))
    pos = torch.randn(h.num_nodes, 4) if with_pos else None
    launches = triton_programme.record_launches(
        q, k, v, compile_hierarchy(h), scale=0.125, energy=energy, positions=pos
    )
    results, seen = [], set()
    for launch in launches:
        fn, args, kwargs = launch.kernel, launch.args, launch.kwargs
        signature, constexprs, attrs, options = _signature(fn, args, kwargs)
        key = (fn.__name__, repr(sorted(signature.items())), repr(sorted(constexprs.items())))
        if key in seen:
            continue
        seen.add(key)
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
        ptx = compiled.asm["ptx"]
        registers, spills = _ptxas_report(ptx, arch)
        cores = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "-"
        results.append(
            CompiledKernel(
                kernel=fn.__name__,
                constexprs={k: v for k, v in constexprs.items() if k in _SHOWN},
                num_warps=options.get("num_warps", 4),
                registers=registers,
                spill_bytes=spills,
                shared_bytes=compiled.metadata.shared,
                tensor_cores=cores,
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.triton_compile", description=__doc__)
    parser.add_argument("cases", nargs="*", default=list(CASES), help=f"of {list(CASES)}")
    parser.add_argument("--arch", type=int, default=90, help="compute capability (default 90)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    report = {case: [asdict(k) for k in compile_case(case, args.arch)] for case in args.cases}
    if args.json:
        print(json.dumps(report))
        return 0
    for case, kernels in report.items():
        print(f"{case}:")
        for k in kernels:
            print(
                f"  {k['kernel']:<20} warps={k['num_warps']} regs={k['registers']:<3} "
                f"spill={k['spill_bytes']:<5} smem={k['shared_bytes']:<6} "
                f"cores={k['tensor_cores']:<5} {k['constexprs']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
