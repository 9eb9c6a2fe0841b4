"""Implementation selection: which code path the ops run (``registry``)."""
