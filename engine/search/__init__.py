"""Search: study files, cross-validated trials on Ray Tune + Optuna + ASHA, the results store."""

from .study import StudyConfig, StudyError

__all__ = ["StudyConfig", "StudyError", "StudyStore"]


def __getattr__(name: str):
    if name == "StudyStore":  # pyarrow + pandas: loaded on first use, not for `search --help`
        from .store import StudyStore

        return StudyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
