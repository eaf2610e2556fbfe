"""``inversion``: Concept-Inversion-style textual inversion on the erased model.

k new token embeddings are learned with the standard diffusion loss on images of the concept (the user's folder,
or images the base model generates for the concept's prompts) while the erased model stays frozen; the attack
prompt is ``a photo of a <v1> ... <vk>``. If the erasure only cut the word's route to the concept, the concept is
still reachable through some other embedding and this finds it.
"""
from __future__ import annotations

import torch

from .base import Attack, random_vectors, register_attack

TEMPLATE = "a photo of a {}"


@register_attack("inversion")
class InversionAttack(Attack):
    default_lr = 1e-2

    def setup(self) -> None:
        self.vectors = torch.nn.Parameter(random_vectors(self.pipe, self.k, self.seed).clone())
        self.opt = torch.optim.Adam([self.vectors], lr=self.lr)
        self.text = TEMPLATE.format(self.slots.text)

    def step(self) -> float:
        return self.descend(self.vectors)

    def current(self):
        return self.text, self.vectors.detach().clone()
