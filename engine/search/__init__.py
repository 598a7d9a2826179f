"""Search: study files, cross-validated trials on Ray Tune + Optuna + ASHA, the results store."""

from .store import StudyStore
from .study import StudyConfig, StudyError

__all__ = ["StudyConfig", "StudyError", "StudyStore"]
