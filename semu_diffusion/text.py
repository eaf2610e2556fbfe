"""Small English text helpers shared by the concept planner and the toy world's captions."""
from __future__ import annotations


def article(text: str) -> str:
    """Fix 'a' -> 'an' (and 'an' -> 'a') before the next word by its first letter: 'a apple' -> 'an apple'."""
    words = text.split(" ")
    out = []
    for i, w in enumerate(words):
        if w in ("a", "an") and i + 1 < len(words) and words[i + 1]:
            w = "an" if words[i + 1][0] in "aeiou" else "a"
        out.append(w)
    return " ".join(out)
