import math

import pytest
import torch
from divergence_cases import IGNORE, check_parity, copies, distributions, generalized_jsd, labels_with_ignored, run
from parity import DEVICE, DTYPES, assert_matches, sizes

from liger_kernel.ops.jsd import LigerJSDFunction, jsd_backward, jsd_forward, jsd_reference
from liger_kernel.transformers import LigerJSD
from liger_kernel.transformers.functional import liger_jsd

SHAPES = sizes(cpu=[(7, 37), (3, 2049), (2, 3, 45)], gpu=[(4096, 32000), (1024, 128256), (8, 511, 4099)])
BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


def jsd_inputs(shape, dtype):
    return distributions(shape, dtype, log=True), distributions(shape, dtype, log=True, scale=1.0)


def check_jsd(shape, dtype, beta, labels=None, teacher_grad=True):
    log_q, log_p = jsd_inputs(shape, dtype)
    log_p.requires_grad_(teacher_grad)
    check_parity(
        "jsd",
        lambda q, p: LigerJSDFunction.apply(q, p, labels, beta),
        lambda q, p: jsd_reference(q, p, labels, beta),
        [log_q, log_p],
        dtype,
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
def test_parity(shape, dtype, beta):
    check_jsd(shape, dtype, beta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("all_ignored", [False, True], ids=["some-ignored", "all-ignored"])
def test_ignored_rows(dtype, beta, all_ignored):
    """Rows at ignore_index count 0 and are not counted; all ignored gives 0 and zero gradients."""
    shape = SHAPES[-1]
    labels = labels_with_ignored(math.prod(shape[:-1]), all_ignored=all_ignored).view(shape[:-1])
    check_jsd(shape, dtype, beta, labels)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("with_labels", [False, True])
def test_reference_is_trl_generalized_jsd(beta, with_labels):
    log_q, log_p = jsd_inputs((9, 33), torch.float64)
    labels = labels_with_ignored(9) if with_labels else None
    ref, upstream, ref_grads = run(lambda q, p: jsd_reference(q, p, labels, beta), [log_q, log_p])
    trl, _, trl_grads = run(lambda q, p: generalized_jsd(q, p, labels, beta), [log_q, log_p], upstream)
    torch.testing.assert_close(ref, trl)
    for a, b in zip(ref_grads, trl_grads):
        torch.testing.assert_close(a, b)


def test_frozen_teacher_gets_no_gradient():
    check_jsd((7, 37), torch.bfloat16, 0.3, teacher_grad=False)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_low_level_forward_backward(beta):
    """jsd_forward's dX (one launch with the loss) times the upstream gradient is the autograd gradient."""
    log_q, log_p = jsd_inputs((7, 37), torch.float32)
    labels = labels_with_ignored(7)
    loss, dx = jsd_forward(log_q.detach(), log_p.detach(), labels, beta, IGNORE, True)
    dx = jsd_backward(dx, torch.tensor(1.5, device=DEVICE))
    ref, _, (ref_dx,) = run(
        lambda q: jsd_reference(q, log_p.detach().double(), labels, beta),
        copies([log_q], torch.float64),
        torch.tensor(1.5, dtype=torch.float64),
    )
    assert_matches("loss", loss, ref)
    assert_matches("dX", dx, ref_dx)
    with pytest.raises(ValueError, match="`has_label` is False but `shift_labels` is given"):
        jsd_forward(log_q, log_p, labels, beta, IGNORE, False)


def test_module_and_functional():
    log_q, log_p = jsd_inputs((7, 37), torch.float32)
    labels = labels_with_ignored(7)
    expected = generalized_jsd(log_q.double(), log_p.double(), labels, 0.3)
    loss_fn = LigerJSD(beta=0.3)
    assert (loss_fn.beta, loss_fn.ignore_index) == (0.3, -100)
    assert_matches("module", loss_fn(log_q, log_p, labels), expected)
    assert_matches("functional", liger_jsd(log_q, log_p, labels, beta=0.3), expected)


@pytest.mark.parametrize("forced_by", ["LIGER_KERNEL_IMPL", "jsd_impl"])
def test_torch_impl_runs_the_reference(monkeypatch, forced_by):
    if forced_by == "LIGER_KERNEL_IMPL":
        monkeypatch.setenv("LIGER_KERNEL_IMPL", "torch")
    impl = "torch" if forced_by == "jsd_impl" else None
    log_q, log_p = jsd_inputs((7, 37), torch.bfloat16)
    out, upstream, grads = run(
        lambda q, p: LigerJSDFunction.apply(q, p, None, 0.5, IGNORE, impl), copies([log_q, log_p])
    )
    ref, _, ref_grads = run(lambda q, p: jsd_reference(q, p), copies([log_q, log_p]), upstream)
    assert torch.equal(out, ref) and all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"beta": 1.5}, ValueError, r"`beta` must be in \[0, 1\]"),
        ({"jsd_impl": "cuda"}, ValueError, "`jsd_impl` must be None, 'triton' or 'torch'"),
        ({"jsd_mode": "fast"}, ValueError, "`jsd_mode` must be None"),
        (
            {"shift_labels": torch.zeros(6, dtype=torch.long)},
            ValueError,
            "`shift_labels` has 6 labels but the inputs have 7",
        ),
        ({"shift_labels": torch.zeros(7)}, TypeError, "`shift_labels` must be an integer tensor"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, error, match):
    log_q, log_p = jsd_inputs((7, 37), torch.float32)
    kwargs = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    args = {"shift_labels": None, "beta": 0.5, "ignore_index": IGNORE, "jsd_impl": None, "jsd_mode": None} | kwargs
    with pytest.raises(error, match=match):
        LigerJSDFunction.apply(log_q, log_p, *args.values())


def test_strided_and_float64_inputs():
    """A column slice (row stride past the row width) runs the kernels on a view; float64 inputs
    run the reference in float64."""
    wide_q, wide_p = jsd_inputs((7, 50), torch.float32)
    labels = labels_with_ignored(7)
    check_parity(
        "jsd strided",
        lambda q, p: LigerJSDFunction.apply(q[:, :37], p[:, 5:42], labels, 0.4),
        lambda q, p: jsd_reference(q[:, :37], p[:, 5:42], labels, 0.4),
        [wide_q, wide_p],
        torch.float32,
    )
    log_q, log_p = jsd_inputs((7, 37), torch.float64)
    check_parity(
        "jsd fp64",
        lambda q, p: LigerJSDFunction.apply(q, p, labels),
        lambda q, p: jsd_reference(q, p, labels),
        [log_q, log_p],
        torch.float64,
    )
