"""``prompt-search``: an UnlearnDiffAtk-style discrete search for k adversarial prompt tokens.

The prompt is ``<t1> ... <tk> <concept prompt>`` where each t_i is a real token of the vocabulary. The search keeps
continuous embeddings, projects them to their nearest vocabulary tokens (cosine) for every forward pass, and
updates the continuous copy with the gradient taken at the projection (PEZ's straight-through projection), so the
objective, the erased model's denoising loss on images of the concept, is always measured on a real, typeable
prompt. The runner judges the current prompt at each checkpoint and keeps the best (the attacker may use the judge).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Attack, embedding_matrix, register_attack


@register_attack("prompt-search")
class PromptSearchAttack(Attack):
    default_lr = 2e-2

    def setup(self) -> None:
        E = embedding_matrix(self.pipe).detach().float()
        tok = self.pipe.tokenizer
        specials = set(getattr(tok, "all_special_ids", []) or [])
        cand = torch.tensor([i for i in range(E.shape[0]) if i not in specials], device=E.device)
        self.cand = cand
        self.cand_unit = F.normalize(E[cand], dim=1)
        self.E = E
        start = cand[torch.randint(0, len(cand), (self.k,), generator=self.gen).to(cand.device)]
        self.cont = torch.nn.Parameter(E[start].clone())
        self.opt = torch.optim.AdamW([self.cont], lr=self.lr, weight_decay=0.1)
        self.text = f"{self.slots.text} {self.prompt}"

    def nearest(self) -> torch.Tensor:
        with torch.no_grad():
            return self.cand[(F.normalize(self.cont.float(), dim=1) @ self.cand_unit.T).argmax(1)]

    def step(self) -> float:
        ids = self.nearest()
        proj = self.E[ids]
        return self.descend(self.cont + (proj - self.cont).detach())  # forward: the real tokens; gradient: to cont

    def current(self):
        ids = self.nearest()
        return self.text, self.E[ids].clone()

    def typed_prompt(self) -> str:
        """The attack prompt as plain text (the searched tokens decoded, then the concept prompt)."""
        words = self.pipe.tokenizer.decode(self.nearest().tolist()).strip()
        return f"{words} {self.prompt}"
