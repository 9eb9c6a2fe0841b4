import pytest
import torch
import torch.nn.functional as F
from parity import DEVICE, DTYPES, ON_GPU, as64, assert_matches, randn, sizes

from liger_kernel.ops import cross_entropy as ce_ops
from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction, cross_entropy_reference
from liger_kernel.transformers import CrossEntropyOutput, LigerCrossEntropyLoss
from liger_kernel.transformers.functional import liger_cross_entropy

OPTION_NAMES = ("weight", "ignore_index", "lse_square_scale", "label_smoothing", "reduction", "softcap")
DEFAULTS = dict(
    weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None
)

SHAPES = sizes(
    cpu=[(13, 37), (7, 1000), (5, 8193)],  # tiny odd vocab; one block; just past a block of 8192
    gpu=[(4096, 128256), (4096, 32000), (1023, 256000)],  # float64 references of 8192x128256 need ~60 GB
)
OPTION_SHAPE = sizes(cpu=(19, 1000), gpu=(2048, 32000))

CASES = {
    "weight": dict(weight=True),
    "ignore": dict(ignore=True),
    "smoothing": dict(label_smoothing=0.1),
    "weight+smoothing+ignore": dict(weight=True, label_smoothing=0.2, ignore=True),
    "custom ignore_index": dict(ignore_index=3, ignore=True),
    "softcap": dict(softcap=2.5),
    "z-loss": dict(lse_square_scale=1e-2, ignore=True),
    "softcap+z-loss": dict(softcap=2.5, lse_square_scale=1e-2, ignore=True),
    "sum": dict(reduction="sum", ignore=True),
    "none": dict(reduction="none", ignore=True),
    "none+weight+smoothing": dict(reduction="none", weight=True, label_smoothing=0.1, ignore=True),
    "everything": dict(
        weight=True, label_smoothing=0.1, softcap=2.5, lse_square_scale=1e-2, reduction="sum", ignore=True
    ),
}


def torch_ce(
    x, y, weight=None, ignore_index=-100, lse_square_scale=0.0, label_smoothing=0.0, reduction="mean", softcap=None
):
    """The yardstick, built from PyTorch's own ops in x's dtype: softcap, ``F.cross_entropy``, and
    the z-loss added per token (reduced with F.cross_entropy's normalizer). ``(loss, z_loss)``."""
    z = x if softcap is None else softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(
        z, y, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing, reduction=reduction
    )
    mask = y != ignore_index
    z_loss = torch.where(mask, lse_square_scale * torch.logsumexp(z, -1) ** 2, 0.0)
    if reduction == "mean":
        norm = mask.sum() if weight is None else torch.where(mask, weight[torch.where(mask, y, 0)], 0).sum()
        z_loss = z_loss.sum() / norm
    elif reduction == "sum":
        z_loss = z_loss.sum()
    return loss + z_loss, z_loss


def make_case(n, v, dtype, case, seed=0):
    torch.manual_seed(seed)
    x = randn(n, v, dtype=dtype, scale=3.0)
    y = torch.randint(0, v, (n,), device=DEVICE)
    opts = dict(DEFAULTS)
    opts.update({k: val for k, val in case.items() if k in OPTION_NAMES})
    if case.get("weight"):
        opts["weight"] = torch.rand(v, device=DEVICE) + 0.1
    if case.get("ignore"):
        y[::3] = opts["ignore_index"]
    return x, y, opts


def liger(x, y, opts, **extras):
    return LigerCrossEntropyFunction.apply(x, y, *[opts[k] for k in OPTION_NAMES], *extras.values())


def check_against_torch(x, y, opts, grad_out=None):
    """Kernel loss, z-loss and input gradient against torch_ce in float64 (yardstick: PyTorch in
    fp32 for the loss, which we compute in fp32 and round once to x's dtype, and in x's dtype for
    the gradient)."""
    dtype = x.dtype
    w64 = None if opts["weight"] is None else opts["weight"].double()
    o64 = dict(opts, weight=w64)
    (x64,) = as64(x.detach().requires_grad_())
    ref, ref_z = torch_ce(x64, y, **o64)
    if grad_out is None:
        grad_out = torch.ones_like(ref)
    ref.backward(grad_out.double())

    base_loss, base_z = torch_ce(x.detach().float(), y, **dict(opts))
    xt = x.detach().clone().requires_grad_()
    base, _ = torch_ce(xt, y, **dict(opts, weight=None if opts["weight"] is None else opts["weight"].to(dtype)))
    base.backward(grad_out.to(base.dtype))

    x_in = x.detach().clone().requires_grad_()
    logits = x_in.clone()  # the backward writes the gradient over this buffer; x_in.grad receives it
    loss, z_loss, acc, pred = liger(logits, y, opts, z=True)
    assert loss.dtype == dtype and z_loss.dtype == dtype and acc is None and pred is None
    loss.backward(grad_out.to(loss.dtype))
    assert_matches("loss", loss, ref.detach(), base_loss)
    assert_matches("z_loss", z_loss, ref_z.detach(), base_z)
    assert_matches("grad", x_in.grad, x64.grad, xt.grad)
    assert x_in.grad.dtype == dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_parity(shape, dtype):
    x, y, opts = make_case(*shape, dtype, {})
    check_against_torch(x, y, opts)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_options(case, dtype):
    x, y, opts = make_case(*OPTION_SHAPE, dtype, CASES[case])
    grad_out = randn(OPTION_SHAPE[0]) if opts["reduction"] == "none" else None  # a true per-token backward
    check_against_torch(x, y, opts, grad_out)


def test_many_blocks(monkeypatch):
    """Online max / sum-exp and argmax across several vocabulary blocks (one row spans 8 of them)."""
    monkeypatch.setattr(ce_ops, "MAX_BLOCK", 128)
    x, y, opts = make_case(9, 1000, torch.float32, CASES["everything"])
    check_against_torch(x, y, opts)
    x = randn(4, 1000)
    x[0, 900] = 50.0  # maximum in the last block
    x[1, 10] = x[1, 700] = 50.0  # tie across blocks: the first index wins, as torch.argmax
    x[2, 130] = x[2, 131] = 50.0  # tie inside a block
    x[3, 10] = x[3, 138] = 50.0  # tie across blocks at the same position in the block
    y = torch.tensor([900, 700, 131, 10], device=DEVICE)
    _, _, acc, pred = liger(x, y, DEFAULTS, z=False, acc=True, pred=True)
    assert pred.tolist() == [900, 10, 130, 10]
    assert acc.item() == pytest.approx(2 / 4)


def test_reference_matches_torch():
    """The reference (the CPU fallback and the spec) is torch_ce in float64, option by option."""
    for case in CASES.values():
        x, y, opts = make_case(11, 37, torch.float64, case)
        if opts["weight"] is not None:
            opts["weight"] = opts["weight"].double()
        grad_out = randn(11).double() if opts["reduction"] == "none" else torch.ones((), dtype=torch.float64)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, a_z = torch_ce(xa, y, **opts)
        b, b_z, _, _ = cross_entropy_reference(xb, y, **opts, return_z_loss=True)
        a.backward(grad_out.to(DEVICE))
        b.backward(grad_out.to(DEVICE))
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b_z, a_z, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_not_nan(monkeypatch, impl, reduction):
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    x = randn(6, 37, requires_grad=True)
    y = torch.full((6,), -100, device=DEVICE)
    opts = dict(DEFAULTS, weight=torch.rand(37, device=DEVICE), label_smoothing=0.1, lse_square_scale=1e-3)
    opts["reduction"] = reduction
    loss, z_loss, acc, _ = liger(x.clone(), y, opts, z=True, acc=True)
    loss.sum().backward()
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(z_loss, torch.zeros_like(z_loss))
    assert acc.item() == 0.0
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("bad_label", [37, -1])
def test_out_of_range_label_is_an_error(monkeypatch, impl, bad_label):
    """A catchable ValueError by default, on a GPU too (there today's code killed the CUDA context)."""
    monkeypatch.delenv("LIGER_KERNEL_CHECK_LABELS", raising=False)
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    x = randn(4, 37, requires_grad=True)
    y = torch.tensor([0, bad_label, -100, 36], device=DEVICE)
    with pytest.raises(ValueError, match=r"`target` holds a label outside \[0, 37\)"):
        liger_cross_entropy(x.clone(), y)


def test_gradient_accumulation_matches_one_batch():
    """Two micro-batches with reduction="sum" divided by the global token count = one big batch."""
    x, y, _ = make_case(24, 1000, torch.float32, CASES["weight+smoothing+ignore"])
    total = (y != -100).sum()
    x_acc = x.detach().clone().requires_grad_()
    for part in (slice(0, 10), slice(10, 24)):
        loss = liger_cross_entropy(x_acc[part].clone(), y[part], reduction="sum", label_smoothing=0.2) / total
        loss.backward()
    x_one = x.detach().clone().requires_grad_()
    liger_cross_entropy(x_one.clone(), y, label_smoothing=0.2).backward()
    (x64,) = as64(x_one)
    torch_ce(x64, y, label_smoothing=0.2)[0].backward()
    assert_matches("accumulated grad", x_acc.grad, x64.grad)
    assert_matches("one-batch grad", x_one.grad, x64.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_non_unit_upstream_gradient(reduction):
    x, y, opts = make_case(*OPTION_SHAPE, torch.bfloat16, dict(ignore=True, reduction=reduction))
    check_against_torch(x, y, opts, grad_out=torch.tensor(-2.75, device=DEVICE))


def test_no_grad_leaves_logits_untouched():
    x, y, opts = make_case(*OPTION_SHAPE, torch.bfloat16, CASES["everything"])
    ref = cross_entropy_reference(*as64(x), y, **opts)[0]
    keep = x.clone()
    x.requires_grad_()
    with torch.no_grad():
        loss = liger(x, y, opts)[0]
    assert torch.equal(x, keep)  # no gradient was written over the logits
    assert_matches("no_grad loss", loss, ref)
    x2 = keep.clone()  # needs no gradient: loss only, buffer untouched
    loss2 = liger(x2, y, opts)[0]
    assert torch.equal(x2, keep) and loss2.grad_fn is None
    assert_matches("no-grad-input loss", loss2, ref)


def test_token_accuracy_and_predicted_tokens():
    x, y, _ = make_case(40, 37, torch.bfloat16, dict(ignore=True))
    y[1::4] = x[1::4].float().argmax(-1)  # some correct predictions
    loss, _, acc, pred = liger(x.clone(), y, DEFAULTS, z=False, acc=True, pred=True)
    mask = y != -100
    expected = torch.where(mask, x.float().argmax(-1), -100)
    assert pred.dtype == torch.int64 and torch.equal(pred, expected)
    assert acc.item() == pytest.approx(((expected == y) & mask).sum().item() / mask.sum().item())
    ref = cross_entropy_reference(x.double(), y, return_token_accuracy=True, return_predicted_tokens=True)
    assert torch.equal(ref[3], expected) and ref[2].item() == pytest.approx(acc.item())


def test_strided_logits():
    """Rows with a padded stride are used in place; a transposed tensor is copied first."""
    wide = randn(9, 45)
    x = wide[:, :37]
    y = torch.randint(0, 37, (9,), device=DEVICE)
    (x64,) = as64(x)
    ref = cross_entropy_reference(x64.requires_grad_(), y)[0]
    ref.backward()
    xin = x.clone().requires_grad_()
    strided = torch.empty(9, 45, device=DEVICE)[:, :37]
    with torch.no_grad():
        strided.copy_(xin)
    strided.requires_grad_()
    loss = liger_cross_entropy(strided, y)
    loss.backward()
    assert_matches("strided loss", loss, ref.detach())
    assert_matches("strided grad", strided.grad, x64.grad)
    xt = x.t().contiguous().t().requires_grad_()  # column stride != 1
    liger_cross_entropy(xt.clone(), y).backward()
    assert_matches("transposed grad", xt.grad, x64.grad)


def test_empty_batch():
    x = randn(0, 37, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long, device=DEVICE)
    for reduction in ("mean", "sum", "none"):
        loss = liger_cross_entropy(x.clone(), y, reduction=reduction)
        loss.sum().backward()
        assert loss.shape == ((0,) if reduction == "none" else ()) and torch.all(loss == 0)
    assert x.grad.shape == (0, 37)


def test_leading_dims_and_module_outputs():
    x = randn(2, 5, 37, requires_grad=True)
    y = torch.randint(0, 37, (2, 5), device=DEVICE)
    loss = LigerCrossEntropyLoss(reduction="none")(x.clone(), y)
    assert loss.shape == (2, 5)
    out = LigerCrossEntropyLoss(lse_square_scale=1e-3, return_z_loss=True, return_token_accuracy=True)(x.clone(), y)
    assert isinstance(out, CrossEntropyOutput) and out.predicted_tokens is None
    assert out.z_loss.shape == () and out.token_accuracy.shape == ()
    out.loss.backward()
    ref = cross_entropy_reference(*as64(x), y, lse_square_scale=1e-3)[0]
    assert_matches("module loss", out.loss, ref)
    assert isinstance(LigerCrossEntropyLoss()(x.clone(), y), torch.Tensor)
    # functional: a superset of F.cross_entropy, legacy size_average/reduce included
    legacy = liger_cross_entropy(x.detach().view(10, 37).clone(), y.view(10), size_average=False)
    assert_matches("legacy sum", legacy, F.cross_entropy(x.detach().double().view(10, 37), y.view(10), reduction="sum"))


def test_torch_impl_switch(monkeypatch):
    monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    x, y, opts = make_case(*OPTION_SHAPE, torch.float32, CASES["everything"])
    check_against_torch(x, y, opts)


def test_bad_inputs_name_the_argument():
    x = randn(4, 37)
    y = torch.zeros(4, dtype=torch.long, device=DEVICE)
    with pytest.raises(TypeError, match="`target`"):
        liger_cross_entropy(x, y.float())
    with pytest.raises(ValueError, match="`target` has 3 labels"):
        liger_cross_entropy(x, y[:3])
    with pytest.raises(ValueError, match="`weight` must have shape"):
        liger_cross_entropy(x, y, weight=torch.ones(36, device=DEVICE))
    with pytest.raises(ValueError, match="`reduction`"):
        liger_cross_entropy(x, y, reduction="avg")
    with pytest.raises(ValueError, match="`label_smoothing`"):
        LigerCrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="`softcap`"):
        liger_cross_entropy(x, y, softcap=0.0)
    with pytest.raises(TypeError, match="`input`"):
        liger_cross_entropy(x.long(), y)
    with pytest.raises(ValueError, match="`input` must have a class dimension"):
        liger_cross_entropy(x[0, 0], y[:1])


@pytest.mark.skipif(not ON_GPU, reason="needs 4.3 GB of logits")
def test_offsets_past_2_31():
    """8200 x 262144 bf16: row * V passes 2^31; the last rows' loss and gradient must still be right."""
    n, v = 8200, 262144
    logits = randn(n, v, dtype=torch.bfloat16, scale=2.0)
    y = torch.randint(0, v, (n,), device=DEVICE)
    tail64 = logits[-4:].double().requires_grad_()
    ref = F.cross_entropy(tail64, y[-4:], reduction="none")
    ref.sum().backward()
    logits.requires_grad_()
    loss = liger_cross_entropy(logits, y, reduction="none")  # a leaf: the gradient gets its own buffer
    grad_out = torch.zeros(n, device=DEVICE)
    grad_out[-4:] = 1.0
    loss.backward(grad_out)
    assert_matches("tail loss", loss[-4:], ref.detach())
    assert_matches("tail grad", logits.grad[-4:], tail64.grad)
    assert torch.all(logits.grad[:-4] == 0)


# ----------------------------------------------------------------------------- issue 11 regressions


def ce_and_penalty_reference(x, y):
    """d/dx of ``F.cross_entropy(x, y) + (x**2).mean()`` in float64."""
    (x64,) = as64(x.detach().requires_grad_())
    (F.cross_entropy(x64, y) + (x64**2).mean()).backward()
    return x64.grad


def test_logits_used_after_the_loss_get_the_right_gradient():
    """The issue's example: the forward wrote the gradient over the logits, which the pow recorded
    after it then read (0.674 instead of 2.599). The logits stay intact through the forward; the
    pow's backward runs before the loss's and reads them intact."""
    x = randn(13, 37, requires_grad=True, scale=3.0)
    y = torch.randint(0, 37, (13,), device=DEVICE)
    logits = x * 1.0
    loss = LigerCrossEntropyLoss()(logits, y)
    assert torch.equal(logits, x.detach())  # a model's outputs.logits are still logits after the loss
    (loss + (logits**2).mean()).backward()
    assert_matches("grad", x.grad, ce_and_penalty_reference(x, y))


def test_logits_saved_before_the_loss_raise_instead_of_a_wrong_gradient():
    """A node that saved the logits and runs its backward after the loss's (it was recorded
    before it) would read the gradient written over them: the version bump makes it raise."""
    x = randn(13, 37, requires_grad=True, scale=3.0)
    y = torch.randint(0, 37, (13,), device=DEVICE)
    logits = x * 1.0
    penalty = (logits**2).mean()
    loss = LigerCrossEntropyLoss()(logits, y)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + penalty).backward()


def test_second_backward_through_overwritten_logits_raises():
    x = randn(13, 37, requires_grad=True)
    y = torch.randint(0, 37, (13,), device=DEVICE)
    logits = x * 1.0
    loss = liger_cross_entropy(logits, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="`input.clone\\(\\)`"):
        loss.backward()
    logits = x * 1.0  # two losses on one logits tensor: the second backward raises the same way
    with pytest.raises(RuntimeError, match="`input.clone\\(\\)`"):
        (liger_cross_entropy(logits, y) + liger_cross_entropy(logits, y, label_smoothing=0.1)).backward()


def test_non_leaf_logits_take_their_gradient_in_place():
    """Liger's memory where it is safe: no [BT, V] buffer for logits computed by the graph; the
    backward writes the gradient over them and bumps their version."""
    x = randn(13, 37, requires_grad=True)
    y = torch.randint(0, 37, (13,), device=DEVICE)
    logits = x * 1.0
    version = logits._version
    liger_cross_entropy(logits, y).backward()
    assert logits._version > version
    assert x.grad.data_ptr() == logits.data_ptr() or torch.equal(x.grad, logits)
    (x64,) = as64(x)
    F.cross_entropy(x64, y).backward()
    assert_matches("in-place grad", x.grad, x64.grad)


@pytest.mark.parametrize("make_leaf", ["tensor", "parameter", "view of a leaf", "leaf view of a plain tensor"])
def test_leaf_logits_stay_intact(make_leaf):
    """Logits owned by a leaf (a user tensor, a parameter, a view of one) are never written: their
    gradient goes to a fresh buffer (it becomes their .grad)."""
    base = randn(13, 40, scale=3.0)
    keep = base[:, :37].clone()
    y = torch.randint(0, 37, (13,), device=DEVICE)
    if make_leaf == "leaf view of a plain tensor":
        leaf = logits = base[:, :37].requires_grad_()
    else:
        base = base[:, :37].clone()
        leaf = torch.nn.Parameter(base) if make_leaf == "parameter" else base.requires_grad_()
        logits = leaf.view(13, 37) if make_leaf == "view of a leaf" else leaf
    loss = liger_cross_entropy(logits, y, reduction="sum")
    loss.backward(torch.tensor(0.5, device=DEVICE))
    assert torch.equal(leaf.detach(), keep) and torch.equal(base[:, :37].detach(), keep)
    (x64,) = as64(keep.requires_grad_())
    (0.5 * F.cross_entropy(x64, y, reduction="sum")).backward()
    assert_matches("leaf grad", leaf.grad, x64.grad)


@pytest.mark.parametrize("impl", ["kernel", "torch"])
def test_double_backward_is_an_error(monkeypatch, impl):
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    x = randn(5, 37, requires_grad=True)
    y = torch.randint(0, 37, (5,), device=DEVICE)
    (grad,) = torch.autograd.grad(liger_cross_entropy(x * 1.0, y), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no second derivative"):  # not a silent 0
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("impl", ["kernel", "torch"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_dtype_is_pytorch_s(monkeypatch, impl, reduction, dtype):
    """Loss, z-loss and per-token losses in the dtype F.cross_entropy returns (the input's),
    computed in fp32 and cast once: backward with a gradient shaped like PyTorch's loss works."""
    if impl == "torch":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    x, y, _ = make_case(19, 37, dtype, dict(ignore=True))
    reference = F.cross_entropy(x.float(), y, reduction=reduction).to(dtype)  # PyTorch's own dtype rule
    assert F.cross_entropy(x, y, reduction=reduction).dtype == dtype
    xin = x.detach().clone().requires_grad_()
    out = liger_cross_entropy(xin * 1, y, reduction=reduction, lse_square_scale=1e-3, return_z_loss=True)
    assert out.loss.dtype == dtype and out.z_loss.dtype == dtype and out.loss.shape == reference.shape
    out.loss.backward(gradient=torch.ones_like(reference))
    (x64,) = as64(x.detach().requires_grad_())
    ref, ref_z = torch_ce(x64, y, reduction=reduction, lse_square_scale=1e-3)
    ref.backward(torch.ones_like(ref))
    assert_matches("loss", out.loss, ref.detach())
    assert_matches("z_loss", out.z_loss, ref_z.detach())
    assert_matches("grad", xin.grad, x64.grad)


class FlagOnAGpu:
    """What ``raise_if_bad_labels`` sees of the kernel's flag on a GPU, here without one: set."""

    device = torch.device("cuda")

    def item(self):
        return 1


def test_bad_label_on_a_gpu_is_a_value_error_by_default(monkeypatch):
    """By default the flag is read on the host: a catchable ValueError, not a device assert that
    kills the CUDA context."""
    monkeypatch.delenv("LIGER_KERNEL_CHECK_LABELS", raising=False)
    with pytest.raises(ValueError, match=r"`target` holds a label outside \[0, 37\)"):
        ce_ops.raise_if_bad_labels(FlagOnAGpu(), 37, -100)


def test_async_label_check_uses_the_device_assert(monkeypatch):
    """``LIGER_KERNEL_CHECK_LABELS=async`` (read at each call): no host sync, the device assert."""
    asserted = []
    monkeypatch.setenv("LIGER_KERNEL_CHECK_LABELS", "async")
    monkeypatch.setattr(torch, "_assert_async", lambda ok, message: asserted.append((bool(ok), message)))
    x = randn(4, 37)
    liger_cross_entropy(x, torch.tensor([0, 37, -100, 36], device=DEVICE))
    assert asserted == [(False, ce_ops.bad_label_message(37, -100))]
    monkeypatch.setenv("LIGER_KERNEL_CHECK_LABELS", "often")
    with pytest.raises(ValueError, match="LIGER_KERNEL_CHECK_LABELS"):
        liger_cross_entropy(x, torch.tensor([0, 1, 2, 3], device=DEVICE))


def test_peer_helpers():
    """The peer's names: ``cross_entropy_forward`` returns the 4 outputs and ``_input`` holding
    the gradient of the loss (upstream 1); ``cross_entropy_backward`` scales it by the upstream
    gradient, per row for reduction="none"; the row kernel is ``liger_cross_entropy_kernel``."""
    import triton

    from liger_kernel.transformers import functional

    assert isinstance(ce_ops.liger_cross_entropy_kernel, triton.runtime.KernelInterface)  # a launchable kernel
    assert functional.CrossEntropyOutput is CrossEntropyOutput
    x, y, _ = make_case(11, 37, torch.float32, dict(ignore=True))
    for reduction, upstream in (("mean", torch.tensor(2.5)), ("none", torch.rand(11))):
        buf = x.clone()
        loss, z_loss, acc, pred, grad = ce_ops.cross_entropy_forward(
            buf, y, None, -100, 1e-3, 0.1, reduction, None, True, return_token_accuracy=True
        )
        assert grad is buf and pred is None and acc.shape == ()
        assert ce_ops.cross_entropy_backward(grad, upstream.to(DEVICE)) is buf
        (x64,) = as64(x.requires_grad_())
        ref, ref_z = torch_ce(x64, y, lse_square_scale=1e-3, label_smoothing=0.1, reduction=reduction)
        ref.backward(upstream.to(DEVICE).double())
        assert_matches(f"{reduction} loss", loss, ref.detach())
        assert_matches(f"{reduction} z_loss", z_loss, ref_z.detach())
        assert_matches(f"{reduction} grad", buf, x64.grad)
        x = x.detach()


def test_dtype_error_lists_every_accepted_dtype():
    with pytest.raises(TypeError, match="`input` must be .*float32.*bfloat16.*float16.*float64"):
        liger_cross_entropy(torch.zeros(4, 37, dtype=torch.int32, device=DEVICE), torch.zeros(4, dtype=torch.long))
