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

from hsa_fast import compile_hierarchy
from hsa_fast.triton import record_launches, triton_interpreted
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


def _specialise(fn: Any, target: Any, args: tuple, kwargs: dict) -> tuple[Any, dict, dict, Any]:
    """Signature, constexprs, attributes and options of a launch, derived by Triton's own JIT
    binder for ``target`` (no GPU needed), so the compiled kernel is the one a launch would get."""
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    return fn._pack_args(backend, kwargs, bound, specialization, options)


def _shown(fn: Any, constexprs: dict) -> dict[str, Any]:
    """The main constexprs of a launch by name, the fields of constexpr named tuples included."""
    flat: dict[str, Any] = {}
    for path, value in constexprs.items():
        if hasattr(value, "_asdict"):
            flat.update(value._asdict())
        elif len(path) == 1:
            flat[fn.arg_names[path[0]]] = value
    return {k: v for k, v in flat.items() if k in _SHOWN}


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

    if triton_interpreted():
        raise RuntimeError("the kernels are interpreted: unset TRITON_INTERPRET and start again")
    h, dtype, d, energy, with_pos = CASES[name]
    q, k, v = (torch.randn(2, h.num_leaves, d).to(dtype) for _ in range(3))
    pos = torch.randn(h.num_nodes, 4) if with_pos else None
    launches = record_launches(
        q, k, v, compile_hierarchy(h), scale=0.125, energy=energy, positions=pos
    )
    target = GPUTarget("cuda", arch, 32)
    results, seen = [], set()
    for launch in launches:
        fn = launch.kernel
        options, signature, constexprs, attrs = _specialise(fn, target, launch.args, launch.kwargs)
        key = (fn.__name__, repr(signature), repr(sorted(constexprs.items())), repr(attrs))
        if key in seen:
            continue
        seen.add(key)
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(source, target=target, options=options.__dict__)
        ptx = compiled.asm["ptx"]
        registers, spills = _ptxas_report(ptx, arch)
        cores = "wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "-"
        results.append(
            CompiledKernel(
                kernel=fn.__name__,
                constexprs=_shown(fn, constexprs),
                num_warps=options.num_warps,
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
