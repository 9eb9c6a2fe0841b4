"""Running a fused op on a module whose parameters FSDP or DeepSpeed ZeRO-3 shard.

Outside its forward, an FSDP-wrapped ``lm_head`` holds only this rank's shard of its weight, so
a fused loss cannot read ``lm_head.weight`` directly. ``_FSDPForwardRedirection`` runs the op
as that module's forward: FSDP gathers the full parameters before it, frees them after, and
hooks the op's output so the backward sees them gathered again and reduce-scatters their
gradients. DeepSpeed ZeRO-3 does the same through hooks on the module that owns a parameter
(gather before its forward, release after, gather again before its backward), and FSDP2
(``fully_shard``) through hooks on the sharded module: ``module_gathering_weight`` names the
module whose forward must run the op.
"""

import sys

from liger_kernel.ops.utils import is_zero3_partitioned


def is_fsdp_wrapped(module) -> bool:
    """Whether ``module`` is a ``FullyShardedDataParallel`` wrapper (none can exist before
    ``torch.distributed.fsdp`` is imported, so this imports nothing)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FullyShardedDataParallel)


class _FSDPForwardRedirection:
    """``_FSDPForwardRedirection()(wrapper_module, method, *args, **kwargs)`` returns
    ``method(*args, **kwargs)``, computed inside ``wrapper_module``'s forward.

    The module that FSDP's forward calls (``wrapper_module._fsdp_wrapped_module``, or the module
    itself when it is not an FSDP wrapper) has its ``forward`` replaced for this one call; the
    call goes through ``wrapper_module(*args, **kwargs)``, so FSDP's pre- and post-forward work
    (gathering, input casting, backward hooks) and any module hooks run around ``method``. The
    original ``forward`` is back before ``method`` runs and after any failure. Unwrapped, the
    result is ``method(*args, **kwargs)`` with the module's hooks run.
    """

    def __call__(self, wrapper_module, method, *args, **kwargs):
        inner = getattr(wrapper_module, "_fsdp_wrapped_module", wrapper_module)
        own_forward = inner.__dict__.get("forward")

        def restore():
            if own_forward is None:
                inner.__dict__.pop("forward", None)
            else:
                inner.forward = own_forward

        def redirected_forward(*method_args, **method_kwargs):
            restore()
            return method(*method_args, **method_kwargs)

        inner.forward = redirected_forward
        try:
            return wrapper_module(*args, **kwargs)
        finally:
            restore()


def module_gathering_weight(module):
    """The module whose forward gathers ``module.weight`` whole, when something shards it
    outside that forward; None when ``module.weight`` can be read directly.

    FSDP2 (``fully_shard(module)``): ``module`` itself. DeepSpeed ZeRO-3: the submodule that
    owns the parameter (``module`` itself, or e.g. the active copy inside a PEFT
    ``modules_to_save`` wrapper, whose own hooks gather only its direct parameters). An FSDP1
    wrapper is ``is_fsdp_wrapped``'s case: redirect through it, reading its ``module``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and isinstance(module, getattr(fsdp, "FSDPModule", ())):
        return module
    weight = module.weight
    if not is_zero3_partitioned(weight):
        return None
    return next(m for m in module.modules() if any(p is weight for p in m._parameters.values()))
