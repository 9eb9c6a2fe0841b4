"""Trainers built on TRL's, with the fused post-training losses. Importing this package imports TRL
(``liger_kernel.transformers`` itself never does)."""

from liger_kernel.transformers.trainer.orpo_trainer import LigerORPOTrainer

__all__ = ["LigerORPOTrainer"]
