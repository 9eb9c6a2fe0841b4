"""Tensor parallel (TP=2) on CPU: two gloo processes run tests/tensor_parallel_cases.py (DTensor norms,
``LigerVocabParallelCrossEntropy``, ``liger_fused_linear_scaled_cross_entropy_tp``) against the
single-process result; the same cases run on two GPUs with NCCL from scripts/gpu/multigpu.sh."""

import pytest
import torch.distributed as dist
from distributed_cases import run


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_tensor_parallel_norms_and_vocab_parallel_losses():
    code, output = run("tp-norms,tp-vocab-ce,tp-flce", timeout=400)
    assert code == 0, output[-6000:]
