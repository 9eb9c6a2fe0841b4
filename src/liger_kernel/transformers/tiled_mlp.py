"""Gated MLPs run in token shards (``ops/tiled_mlp.py``): the parameters and state_dict of
``LigerSwiGLUMLP`` / ``LigerGEGLUMLP``, with one shard's intermediate alive instead of the whole
sequence's (long-context training)."""

from liger_kernel.ops.tiled_mlp import apply_tiled_mlp
from liger_kernel.transformers.geglu import LigerGEGLUMLP
from liger_kernel.transformers.swiglu import LigerSwiGLUMLP


class LigerTiledSwiGLUMLP(LigerSwiGLUMLP):
    """``LigerSwiGLUMLP`` in ``num_shards`` token shards (None: about ``hidden_size`` tokens each)."""

    def __init__(self, config, num_shards=None):
        super().__init__(config)
        self.num_shards = num_shards

    def forward(self, x):
        return apply_tiled_mlp(LigerSwiGLUMLP.forward, self, x, self.num_shards)


class LigerTiledGEGLUMLP(LigerGEGLUMLP):
    """``LigerGEGLUMLP`` in ``num_shards`` token shards (None: about ``hidden_size`` tokens each)."""

    def __init__(self, config, num_shards=None):
        super().__init__(config)
        self.num_shards = num_shards

    def forward(self, x):
        return apply_tiled_mlp(LigerGEGLUMLP.forward, self, x, self.num_shards)
