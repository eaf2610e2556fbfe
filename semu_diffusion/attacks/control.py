"""``random``: the control. The placeholder tokens get random embeddings (the inversion attack's starting point,
same seed) and nothing is optimised: the ASR a non-attack reaches with the same prompt shape."""
from __future__ import annotations

from .base import Attack, random_vectors, register_attack
from .inversion import TEMPLATE


@register_attack("random")
class RandomControl(Attack):
    trains = False

    def setup(self) -> None:
        self.vectors = random_vectors(self.pipe, self.k, self.seed)
        self.text = TEMPLATE.format(self.slots.text)

    def step(self) -> float:
        return float("nan")

    def current(self):
        return self.text, self.vectors.clone()
