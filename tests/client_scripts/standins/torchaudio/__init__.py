"""Stand-in for torchaudio in the LLaMA-Factory environment: LLaMA-Factory 0.9.5 imports torchaudio
at the top of its data pipeline, for audio inputs only. PyPI's torchaudio wheels are CUDA builds for
another torch, so the client environment cannot hold a real one; the tests feed no audio, and any use
says so."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("torchaudio is a stand-in in the client test environment (tests/client_scripts/standins)")


load = _unavailable


class functional:  # noqa: N801 (the module name LLaMA-Factory calls)
    resample = staticmethod(_unavailable)
