"""The evaluation's two refusals, shared by the options, the judges and the model loaders. A leaf module: it
imports nothing of the evaluation package, so every module there can import it at the top."""
from __future__ import annotations


class EvalOptionError(ValueError):
    """A bad semu-eval option (exit code 2)."""


class JudgeUnavailable(RuntimeError):
    """A judge whose dependency or weights are missing (one-line message naming what is missing)."""
