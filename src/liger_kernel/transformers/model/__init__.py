"""The generic causal-LM forward and its losses (``causal_lm``, ``loss_utils``)."""
