"""Gated MLPs run in token shards (``ops/tiled_mlp.py``): the parameters and state_dict of
``LigerSwiGLUMLP`` / ``LigerGEGLUMLP``, with one shard's intermediate alive instead of the whole
sequence's (long-context training). The patch functions' ``tiled_mlp=True`` builds the family's MLP
as ``tiled(<its Liger MLP>)``."""

from liger_kernel.ops.tiled_mlp import apply_tiled_gated_mlp, apply_tiled_mlp
from liger_kernel.transformers.geglu import LigerGEGLUMLP
from liger_kernel.transformers.swiglu import LigerSwiGLUMLP, fusable


class TiledForward:
    """The forward of the MLP class after this one in the MRO, run in ``num_shards`` token shards
    (None: about ``hidden_size`` tokens each): on the tiled gated MLP Function where the untiled
    one would take the fused MLP (plain projections; its recompute skips the down projection),
    else on the generic tiled Function around the untiled forward. The backward recomputes gate
    and up: per layer 2 x tokens x intermediate fewer activations kept, for 4 x tokens x hidden x
    intermediate more FLOPs. The activation is the MLP class's ``activation``."""

    num_shards = None

    def forward(self, x):
        projections = (self.gate_proj, self.up_proj, self.down_proj)
        if fusable(x, *projections):  # kernels, or under compile (the op picks the reference itself)
            weights = (p.weight for p in projections)
            return apply_tiled_gated_mlp(x, *weights, self.activation, self.num_shards)
        return apply_tiled_mlp(_untiled_forward, self, x, self.num_shards)


def _untiled_forward(mlp, x):
    return super(TiledForward, mlp).forward(x)


def tiled(mlp_class):
    """``mlp_class`` (gate_proj, up_proj, down_proj; ``activation(gate) * up``) under its own
    constructor, its forward ``TiledForward``'s."""
    return type(f"Tiled{mlp_class.__name__}", (TiledForward, mlp_class), {})


class _Tiled(TiledForward):
    def __init__(self, config, num_shards=None):
        super().__init__(config)
        self.num_shards = num_shards


class LigerTiledSwiGLUMLP(_Tiled, LigerSwiGLUMLP):
    """``LigerSwiGLUMLP`` in token shards: ``(config, num_shards=None)``."""


class LigerTiledGEGLUMLP(_Tiled, LigerGEGLUMLP):
    """``LigerGEGLUMLP`` in token shards: ``(config, num_shards=None)``."""
