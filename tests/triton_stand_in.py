"""A stand-in CUDA driver for Triton: Triton's own launch path (``JITFunction.run``: binding,
specialization, the compiled-kernel cache) runs on a machine without a GPU, its compiled kernels
replaced by ``compiled_kernel``s. Used by ``tests/test_launch.py`` and
``benchmarks/host_cost_cpu.py``."""

from types import SimpleNamespace

from triton.backends.compiler import GPUTarget


class StandInDriver:
    """Triton's active driver, reporting one CUDA device (sm_90) and its default stream."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def compiled_kernel(jit_fn, key, device, backend="cuda"):
    """Stands in for what ``JITFunction._do_compile`` caches and returns (Triton 3.4-3.9): a
    compiled kernel for ``backend`` whose launcher (``run``, replaceable) does nothing."""
    compiled = SimpleNamespace(
        function=0,
        packed_metadata=(),
        metadata=SimpleNamespace(target=GPUTarget(backend, 90, 32)),
        launch_metadata=lambda grid, stream, *args: None,
        run=lambda *args: None,
    )
    jit_fn.device_caches[device][0][key] = compiled
    return compiled
