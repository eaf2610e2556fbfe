"""Concept-recovery attacks (red-teaming an erasure): a registry like ``methods/``.

- ``inversion``: learn k token embeddings on the erased model (Concept Inversion / textual inversion);
- ``prompt-search``: UnlearnDiffAtk-style discrete search over prompt tokens (PEZ projection);
- ``embedding`` / ``embedding-neutral``: learn the whole text conditioning (every position, continuous values),
  from the concept prompt's or the empty prompt's;
- ``random``: the control, random token embeddings.

Entry point: :func:`run_attacks` (CLI: ``semu-attack``; ``semu-eval --attack NAME``).
"""
from .base import Attack, available_attacks, get_attack, register_attack
from .options import AttackConfig, AttackOptionError
from .run import run_attacks

__all__ = ["Attack", "AttackConfig", "AttackOptionError", "available_attacks", "get_attack", "register_attack",
           "run_attacks"]
