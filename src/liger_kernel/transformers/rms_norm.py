"""RMSNorm modules: ``LigerRMSNorm``, a drop-in for Hugging Face's ``LlamaRMSNorm`` (and, with
``offset=1.0, casting_mode="gemma", init_fn="zeros"``, ``GemmaRMSNorm``), and Liger's per-family
subclasses, which only change the constructor's defaults to each family's numerics."""

import torch
import torch.nn as nn

from liger_kernel.ops.rms_norm import LigerRMSNormFunction, casting_mode_name
from liger_kernel.transformers.tensor_parallel import is_dtensor, norm_on_local_tensors

INIT_FNS = ("ones", "zeros")


class LigerRMSNorm(nn.Module):
    """RMSNorm over the last dimension: ``(hidden_states [..., hidden_size]) -> same shape``.

    ``weight`` starts at ones or zeros (``init_fn``; Gemma stores ``w`` of ``1 + w`` and starts
    at zeros); with ``elementwise_affine=False`` there is no weight. See
    ``LigerRMSNormFunction`` for ``casting_mode`` and ``row_mode``.

    ``in_place=True`` (the default) lets the backward write dX into the output gradient's buffer
    only together with ``grad_output_unshared=True``: the caller's word that nothing else reads
    that gradient (true of pre-norm call sites, where the patch sets it; false of ``x + norm(x)``).
    By default the backward never touches the incoming gradient, whatever ``in_place`` says.
    """

    def __init__(
        self,
        hidden_size,
        eps=1e-6,
        offset=0.0,
        casting_mode="llama",
        init_fn="ones",
        in_place=True,
        row_mode=None,
        elementwise_affine=True,
        grad_output_unshared=False,
    ):
        super().__init__()
        if init_fn not in INIT_FNS:
            raise ValueError(f"`init_fn` must be one of {INIT_FNS}, got {init_fn!r}.")
        self.hidden_size = hidden_size
        self.variance_epsilon = eps
        self.offset = offset
        self.casting_mode = casting_mode_name(casting_mode)
        self.in_place = in_place
        self.row_mode = row_mode
        self.elementwise_affine = elementwise_affine
        self.grad_output_unshared = grad_output_unshared
        if elementwise_affine:
            if hidden_size is None:
                raise ValueError("`hidden_size` (`dim`) is None: give the size of the weight, or no weight.")
            fill = torch.ones if init_fn == "ones" else torch.zeros
            self.weight = nn.Parameter(fill(hidden_size))
        else:
            self.register_parameter("weight", None)

    def forward(self, hidden_states):
        options = (
            self.variance_epsilon,
            self.offset,
            self.casting_mode,
            self.in_place,
            self.row_mode,
            self.grad_output_unshared,
        )
        if is_dtensor(hidden_states) or is_dtensor(self.weight):  # tensor parallel
            return norm_on_local_tensors(LigerRMSNormFunction.apply, hidden_states, (self.weight,), *options)
        return LigerRMSNormFunction.apply(hidden_states, self.weight, *options)

    def extra_repr(self):
        return (
            f"{self.hidden_size}, eps={self.variance_epsilon}, offset={self.offset}, "
            f"casting_mode={self.casting_mode!r}, in_place={self.in_place}, "
            f"elementwise_affine={self.elementwise_affine}, grad_output_unshared={self.grad_output_unshared}"
        )


# Liger's per-family classes (their names and defaults): each is LigerRMSNorm with that family's
# Hugging Face numerics as its defaults. ``in_place`` keeps Liger's default per class; it reuses
# the gradient buffer only with ``grad_output_unshared=True`` (see LigerRMSNorm).


class LigerRMSNormForGemma(LigerRMSNorm):
    """``GemmaRMSNorm``: ``x_hat * (1 + w)`` in fp32, weight stored as zeros at init."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=True, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)


class LigerRMSNormForGemma2(LigerRMSNorm):
    """``Gemma2RMSNorm`` (Gemma's numerics)."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=False, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)


class LigerRMSNormForGemma3(LigerRMSNorm):
    """``Gemma3RMSNorm`` (Gemma's numerics; the size is ``dim``, as there)."""

    def __init__(self, dim, eps=1e-6, offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=False):
        super().__init__(dim, eps, offset, casting_mode, init_fn, in_place)


class LigerRMSNormForGemma4(LigerRMSNorm):
    """``Gemma4RMSNorm``: ``x_hat * w`` in fp32 with the weight at ones, or no weight at all
    (``with_scale=False``)."""

    def __init__(
        self, dim, eps=1e-6, offset=0.0, casting_mode="gemma", init_fn="ones", in_place=False, with_scale=True
    ):
        super().__init__(dim, eps, offset, casting_mode, init_fn, in_place, elementwise_affine=with_scale)
        self.with_scale = with_scale


class LigerRMSNormForGlm4(LigerRMSNorm):
    """``Glm4RMSNorm``: Llama's numerics (x_hat rounded to the input dtype, then the weight)."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=0.0, casting_mode="llama", init_fn="ones", in_place=False, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)


class LigerRMSNormForOlmo2(LigerRMSNorm):
    """``Olmo2RMSNorm``. Liger's default ``casting_mode="llama"`` rounds x_hat before the weight;
    Hugging Face applies the weight in fp32 (``"gemma"``, what the patch uses): the two agree in
    fp32 and differ by a rounding in half precision."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=0.0, casting_mode="llama", init_fn="ones", in_place=False, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)


class LigerRMSNormForQwen3Next(LigerRMSNorm):
    """``Qwen3NextRMSNorm`` (Gemma's numerics: ``1 + w`` in fp32, zeros at init)."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=False, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)


class LigerRMSNormForMuseGlimmer(LigerRMSNorm):
    """``MuseGlimmerRMSNorm`` (Gemma 4's numerics; ``dim`` may be None without a weight)."""

    def __init__(
        self, dim=None, eps=1e-6, offset=0.0, casting_mode="gemma", init_fn="ones", in_place=False, with_scale=True
    ):
        super().__init__(dim, eps, offset, casting_mode, init_fn, in_place, elementwise_affine=with_scale)
        self.with_scale = with_scale


class LigerRMSNormForMuseGlimmerTextCentered(LigerRMSNorm):
    """``MuseGlimmerTextCenteredRMSNorm`` (Gemma's numerics)."""

    def __init__(
        self, hidden_size, eps=1e-6, offset=1.0, casting_mode="gemma", init_fn="zeros", in_place=False, row_mode=None
    ):
        super().__init__(hidden_size, eps, offset, casting_mode, init_fn, in_place, row_mode)
