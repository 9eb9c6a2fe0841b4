"""Registers and spills of a few kernel configurations for sm_90, without a GPU: Triton compiles
the kernel ahead of time (pointers and int arguments marked 16-byte divisible, as the JIT
specializes them) and ptxas reports its resources. How the fused add RMSNorm's backward tile was
chosen (``ops/fused_add_rms_norm.py``): RMSNorm's 4 rows x 4096 columns spill with the residual
gradient, 2 rows do not. Needs a ptxas for the PTX version Triton emits (Triton's bundled
``ptxas-blackwell`` for Triton 3.9).

    PYTHONPATH=src python benchmarks/kernel_registers.py
"""

import os
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")


def resources(fn, signature: dict, constexprs: dict, num_warps: int) -> str:
    """ptxas's register / spill line for ``fn`` with these argument types and constexprs."""
    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in signature.items() if t[0] in "*i"}
    source = ASTSource(fn, {**signature, **dict.fromkeys(constexprs, "constexpr")},
                       {(names.index(k),): v for k, v in constexprs.items()}, attrs)  # fmt: skip
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        done = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", path, "-o", path + ".cubin"],
                              capture_output=True, text=True)  # fmt: skip
    lines = [
        line.split("info    : ")[-1].strip() for line in done.stderr.splitlines() if "spill" in line or "Used" in line
    ]
    return "; ".join(lines) or done.stderr.strip()[-200:]


def main():
    from liger_kernel.ops import norms

    pointers = dict(DY="*bf16", X="*bf16", W="*bf16", STATS="*fp32", DX="*bf16", PARTIALS="*fp32", DRES="*bf16")
    ints = dict.fromkeys(("stride_dy", "stride_x", "stride_dx", "stride_dres", "n_rows", "n_cols"), "i32")
    signature = {**pointers, **ints, "offset": "fp32"}
    for residual in (False, True):
        for rows, warps in ((4, 16), (2, 16), (1, 16), (1, 8)):
            constexprs = dict(IS_RMS=True, CASTING=0, HAS_W=True, DW=True, DB=False, HAS_DRES=residual,
                              BLOCK_ROWS=rows, BLOCK_N=4096, SINGLE=True)  # fmt: skip
            info = resources(norms._norm_backward_kernel, signature, constexprs, warps)
            print(f"RMSNorm backward, 4096 columns, residual gradient {residual}, {rows} rows x {warps} warps: {info}")


if __name__ == "__main__":
    os.environ.pop("TRITON_INTERPRET", None)
    main()
