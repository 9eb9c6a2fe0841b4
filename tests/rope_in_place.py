"""Checks of the in-place contract shared by the RoPE variants that rotate q and k in place
(M-RoPE, Llama 4 RoPE; ``ops.rope.InPlaceRopeFunction``)."""

import pytest
import torch
from parity import assert_matches, randn


def hf_views(xq, xk, transpose):
    """q and k as HF's attention makes them from projections: a product of ``xq`` / ``xk``
    ([B, T, H, D] leaves), viewed [B, H, T, D] with ``transpose``."""
    return tuple((x * 1).transpose(1, 2) if transpose else x * 1 for x in (xq, xk))


def check_in_place(apply, reference, xq, xk, transpose, args, args64):
    """``apply(q, k, *args)`` on HF's views rotates q and k in place (the returned tensors share
    their memory and strides, and q and k hold the rotated values); outputs and the gradients of
    the projections match ``reference`` in float64; the caller's upstream gradients stay as given."""
    q, k = hf_views(xq, xk, transpose)
    before = [x.detach().clone() for x in (q, k)]
    dq_out, dk_out = randn(*q.shape, dtype=q.dtype), randn(*k.shape, dtype=k.dtype)
    given = dq_out.clone(), dk_out.clone()
    out = apply(q, k, *args)
    for name, o, x in zip(("q", "k"), out, (q, k)):
        assert o.data_ptr() == x.data_ptr() and o.stride() == x.stride(), f"{name} was not rotated in place"
        assert torch.equal(o.detach(), x.detach()), f"{name} does not hold the rotated values"
    q64, k64 = (x.double().requires_grad_() for x in before)
    out64 = reference(q64, k64, *args64)
    grads64 = torch.autograd.grad(out64, (q64, k64), (dq_out.double(), dk_out.double()))
    qb, kb = (x.clone().requires_grad_() for x in before)
    base = reference(qb, kb, *args)
    base_grads = torch.autograd.grad(base, (qb, kb), (dq_out, dk_out))
    grads = [g.transpose(1, 2) if transpose else g for g in torch.autograd.grad(out, (xq, xk), (dq_out, dk_out))]
    for name, a, r, b in zip(("q_out", "k_out", "dq", "dk"), (*out, *grads), (*out64, *grads64), (*base, *base_grads)):
        assert_matches(name, a, r, b)
    assert torch.equal(dq_out, given[0]) and torch.equal(dk_out, given[1]), "an upstream gradient was overwritten"


def check_saved_pre_rotation_raises(apply, xq, xk, args):
    """A caller whose own backward needs the pre-rotation q (``exp`` saves its result) gets
    autograd's version-counter error, not a gradient computed from the rotated values."""
    q, k = xq.exp(), xk * 1
    out = apply(q, k, *args)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(sum(o.sum() for o in out), (xq, xk))


def check_new_outputs_where_not_writable(apply, reference, xq, xk, transpose, args):
    """Leaves that require grad, views of them and outputs of ``split`` (which autograd forbids
    writing in place) get new outputs; the inputs keep their values; the gradients are right."""
    qkv = torch.cat((xq, xk), dim=2) * 1
    hq = xq.shape[2]
    split = [x.transpose(1, 2) if transpose else x for x in qkv.split([hq, xk.shape[2]], dim=2)]
    leaf_views = [x.transpose(1, 2) if transpose else x for x in (xq, xk)]
    for q, k in (leaf_views, split):
        before = [x.detach().clone() for x in (q, k)]
        out = apply(q, k, *args)
        expected = reference(*before, *args)
        for o, x, b, e in zip(out, (q, k), before, expected):
            assert o.data_ptr() != x.data_ptr() and torch.equal(x.detach(), b)
            torch.testing.assert_close(o.detach(), e)
        dq_out, dk_out = torch.ones_like(out[0]), torch.ones_like(out[1])
        grads = torch.autograd.grad(out, (xq, xk), (dq_out, dk_out))
        qr, kr = (b.clone().requires_grad_() for b in before)
        expected_grads = torch.autograd.grad(reference(qr, kr, *args), (qr, kr), (dq_out, dk_out))
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g.transpose(1, 2) if transpose else g, e)


class _Fresh(torch.autograd.Function):
    """Identity whose backward hands on a new gradient in the input's layout (as attention's
    does), noting its address."""

    seen = []

    @staticmethod
    def forward(ctx, x):
        ctx.layout = x.shape, x.stride()
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = torch.empty_strided(*ctx.layout, dtype=g.dtype, device=g.device).copy_(g)
        _Fresh.seen.append(g.data_ptr())
        return g


class _Arrived(torch.autograd.Function):
    """Identity noting the address of the gradient that reaches it."""

    seen = []

    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, g):
        _Arrived.seen.append(g.data_ptr())
        return g


def check_backward_over_owned_gradient(apply, xq, xk, transpose, args):
    """A fresh upstream gradient nothing else reads (as attention's) is rotated in place: the same
    buffer reaches the projection (through HF's views with ``transpose``); one an add shares with
    another input is not (that input's gradient stays right)."""
    _Fresh.seen.clear(), _Arrived.seen.clear()
    q, k = (_Arrived.apply(x).transpose(1, 2) if transpose else _Arrived.apply(x) for x in (xq, xk))
    qo, ko = apply(q, k, *args)
    ((_Fresh.apply(qo) * 1).sum() + (_Fresh.apply(ko) * 1).sum()).backward()
    assert sorted(_Fresh.seen) == sorted(_Arrived.seen), "the owned upstream gradients were not reused"
    q, k = hf_views(xq, xk, transpose)
    qo, ko = apply(q, k, *args)
    w = torch.zeros_like(qo, requires_grad=True)
    upstream = randn(*qo.shape, dtype=qo.dtype)
    (dw,) = torch.autograd.grad((_Fresh.apply(qo + w) * upstream).sum() + ko.sum(), (w,))
    assert torch.equal(dw, upstream), "the gradient an add shares was overwritten"
