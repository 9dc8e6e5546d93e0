"""sepcli: music source separation from the command line, and from Python.

    import sepcli
    sep = sepcli.load("default")
    stems = sep.separate(audio, sample_rate)

`load`, `separate_files` and `Separator` live in `sepcli.api`; they are imported on first use,
so that `sepcli --help` does not wait for torch.
"""

__version__ = "0.1.0"

_API = (
    "load",
    "load_ensemble",
    "separate_files",
    "Separator",
    "load_transcriber",
    "transcribe_files",
    "Transcriber",
)


def __getattr__(name: str):
    if name in _API:
        from sepcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'sepcli' has no attribute {name!r}")


__all__ = ["__version__", *_API]
