"""Backward of the gated Functions writes da, db over a, b only where nobody can read them.

Each case builds a and b as the projections an MLP makes (non-leaf intermediates) or as leaves,
lets other parts of the graph or the caller keep them, and checks: the gradients match float64,
the caller's tensors keep their values, and a write that autograd could still observe raises.
"""

import os
import subprocess
import sys

import pytest
import torch
from parity import as64, assert_matches, randn

import liger_kernel.ops.swiglu as swiglu_ops
from liger_kernel.ops.geglu import LigerGELUMulFunction, geglu_reference
from liger_kernel.ops.swiglu import (
    LigerFusedGateUpSiLUMulFunction,
    LigerGatedMLPFunction,
    LigerSiLUMulFunction,
    swiglu_fused_gate_up_reference,
    swiglu_reference,
)

OPS = {
    "swiglu": (lambda a, b, in_place=None: LigerSiLUMulFunction.apply(a, b, 1.0, 1.0, in_place), swiglu_reference),
    "geglu": (lambda a, b, in_place=None: LigerGELUMulFunction.apply(a, b, in_place), geglu_reference),
}
IN_PLACE = [None, True, False]


def projections(x, w_gate, w_up):
    return x @ w_gate, x @ w_up


def inputs():
    torch.manual_seed(0)
    x = randn(5, 11, requires_grad=True)
    return x, randn(11, 13, requires_grad=True), randn(11, 13, requires_grad=True)


def incoming_grad_ptrs(t):
    """Record the data_ptr of every gradient that reaches the node that made ``t``."""
    seen = []
    t.grad_fn.register_prehook(lambda grads: seen.append(grads[0].data_ptr()))
    return seen


@pytest.mark.parametrize("op", OPS)
def test_private_projections_take_their_gradients(op):
    """The MLP case: a and b are read by nothing but the Function, so da and db go into their
    memory (Liger's memory: no new [N, I] tensor in backward) and the result is still exact."""
    fn, reference = OPS[op]
    x, wg, wu = inputs()
    a, b = projections(x, wg, wu)
    ptrs = (a.data_ptr(), b.data_ptr())
    seen_a, seen_b = incoming_grad_ptrs(a), incoming_grad_ptrs(b)
    c = fn(a, b)
    del a, b
    c.backward(torch.ones_like(c))
    assert (seen_a[0], seen_b[0]) == ptrs
    ref = as64(x, wg, wu)
    reference(*projections(*ref)).backward(torch.ones(5, 13, dtype=torch.float64, device=x.device))
    for name, g, g64 in zip(("dx", "dwg", "dwu"), (x.grad, wg.grad, wu.grad), (r.grad for r in ref)):
        assert_matches(name, g, g64)


@pytest.mark.parametrize("op", OPS)
def test_without_reference_counts_nothing_is_reused_by_default(op, monkeypatch):
    """A torch whose private reference-count APIs are missing leaves PRIVATE_COUNTS unset: the
    default then never writes over a and b (memory, not correctness, is what it costs)."""
    monkeypatch.setattr(swiglu_ops, "PRIVATE_COUNTS", None)
    fn, reference = OPS[op]
    x, wg, wu = inputs()
    a, b = projections(x, wg, wu)
    ptrs = (a.data_ptr(), b.data_ptr())
    seen_a, seen_b = incoming_grad_ptrs(a), incoming_grad_ptrs(b)
    c = fn(a, b)
    del a, b
    c.backward(torch.ones_like(c))
    assert seen_a[0] not in ptrs and seen_b[0] not in ptrs
    ref = as64(x, wg, wu)
    reference(*projections(*ref)).backward(torch.ones(5, 13, dtype=torch.float64, device=x.device))
    for name, g, g64 in zip(("dx", "dwg", "dwu"), (x.grad, wg.grad, wu.grad), (r.grad for r in ref)):
        assert_matches(name, g, g64)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_place", IN_PLACE)
def test_leaves_are_never_written(op, in_place):
    fn, _ = OPS[op]
    a, b = randn(4, 9, requires_grad=True), randn(4, 9, requires_grad=True)
    before = (a.detach().clone(), b.detach().clone())
    seen = []
    c = fn(a, b, in_place)
    c.grad_fn.register_hook(lambda grads_in, grads_out: seen.extend(g.data_ptr() for g in grads_in))
    c.backward(torch.ones_like(c))
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    assert not {a.data_ptr(), b.data_ptr()} & set(seen)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_place", [None, False])
def test_inputs_the_caller_keeps_keep_their_values(op, in_place):
    """A Python name, a view or a detached alias of a or b: their values survive backward."""
    fn, _ = OPS[op]
    x, wg, wu = inputs()
    a, b = projections(x, wg, wu)
    view, alias = a[1:3], b.detach()
    before = (a.detach().clone(), b.detach().clone())
    c = fn(a, b, in_place)
    c.backward(torch.ones_like(c))
    assert torch.equal(a, before[0]) and torch.equal(view, before[0][1:3]) and torch.equal(alias, before[1])


def shared_graph_loss(fn, a, b, in_place):
    """a and b also feed ops that save them for their own backward, made before the Function (so
    their backward runs after its) and after it."""
    before = (a * a).sum() + b.sin().sum()
    return before + (fn(a, b, in_place) ** 2).sum() + (a * b.cos()).sum()


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("in_place", IN_PLACE)
def test_inputs_used_elsewhere_in_the_graph(op, in_place):
    """Right gradients, or (in_place=True, which overwrites anyway) autograd's error: never a wrong value."""
    fn, reference = OPS[op]
    x, wg, wu = inputs()
    ref = as64(x, wg, wu)
    shared_graph_loss(lambda a, b, _: reference(a, b), *projections(*ref), None).backward()
    loss = shared_graph_loss(fn, *projections(x, wg, wu), in_place)
    try:
        loss.backward()
    except RuntimeError as error:
        assert in_place is True and "modified by an inplace operation" in str(error)
        return
    for name, g, g64 in zip(("dx", "dwg", "dwu"), (x.grad, wg.grad, wu.grad), (r.grad for r in ref)):
        assert_matches(name, g, g64)


@pytest.mark.parametrize("op", OPS)
def test_second_backward_through_a_retained_graph(op):
    """The first backward wrote over a and b (private): the second says so instead of reading
    gradients as inputs; with in_place=False both give the right values."""
    fn, _ = OPS[op]
    x, wg, wu = inputs()
    c = fn(*projections(x, wg, wu))
    c.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True.*in_place=False"):
        c.sum().backward()
    x.grad = None
    c = fn(*projections(x, wg, wu), False)
    c.sum().backward(retain_graph=True)
    first = x.grad.clone()
    c.sum().backward()
    assert_matches("dx twice", x.grad, 2 * first.double())


def test_fused_mlp_second_backward_raises():
    """The fused MLP writes over its own saved a and b: a retained graph's second backward raises."""
    x, wg, wu = inputs()
    wd = randn(13, 11, requires_grad=True)
    y = LigerGatedMLPFunction.apply(x, wg.T.contiguous(), wu.T.contiguous(), wd.T.contiguous(), "silu")
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.sum().backward()


@pytest.mark.parametrize("in_place", IN_PLACE)
def test_fused_gate_up(in_place):
    """The stacked form: dy over y only where y is private (or forced), right values throughout."""
    x, w = randn(5, 11, requires_grad=True), randn(11, 26, requires_grad=True)
    y = x @ w
    ptr = y.data_ptr()
    seen = incoming_grad_ptrs(y)
    c = LigerFusedGateUpSiLUMulFunction.apply(y, in_place)
    del y
    c.backward(torch.ones_like(c))
    assert (seen[0] == ptr) == (in_place is not False)
    ref = as64(x, w)
    swiglu_fused_gate_up_reference(ref[0] @ ref[1]).sum().backward()
    assert_matches("dx", x.grad, ref[0].grad)
    assert_matches("dw", w.grad, ref[1].grad)


def test_fused_gate_up_default_and_leaf():
    """The peer's default (in_place=False) allocates dy; a leaf y is never written."""
    y = randn(3, 7, 10, requires_grad=True)
    before = y.detach().clone()
    c = LigerFusedGateUpSiLUMulFunction.apply(y, True)
    c.backward(torch.ones_like(c))
    assert torch.equal(y, before) and y.grad.data_ptr() != y.data_ptr()
    y64 = as64(y)[0]
    swiglu_fused_gate_up_reference(y64).sum().backward()
    assert_matches("dy", y.grad, y64.grad)


def test_multiplier_errors_name_the_argument():
    a = randn(3, 4)
    with pytest.raises(TypeError, match="`gate_multiplier`"):
        LigerSiLUMulFunction.apply(a, a, True)  # the old positional in_place
    with pytest.raises(TypeError, match="`down_multiplier`"):
        LigerSiLUMulFunction.apply(a, a, 1.0, torch.tensor(2.0))
    with pytest.raises(TypeError, match="`in_place`"):
        LigerSiLUMulFunction.apply(a, a, 1.0, 1.0, "yes")


def test_import_in_any_grad_context_calibrates_the_same():
    """The private-reader counts are measured in a thread of their own: importing the op under
    no_grad or inside saved-tensor hooks (a checkpointed region) neither fails nor changes them."""
    code = (
        "import torch\n"
        "with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):\n"
        "    import liger_kernel.ops.swiglu as s\n"
        "print(s.PRIVATE_COUNTS)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(swiglu_ops.PRIVATE_COUNTS)
