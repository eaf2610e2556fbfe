"""``embedding``: whole-prompt-embedding inversion, the strongest conditioning-space attack.

The attacker controls the text conditioning itself: every position of the sequence the UNet cross-attends to
(the text encoder's output, L x D continuous values), not a few token slots. Starting from the concept prompt's
own conditioning (``embedding``) or from the empty prompt's (``embedding-neutral``), Adam minimises the erased
model's denoising loss on images of the concept. The erased weights are never changed; the attacked generations use
the learned conditioning with the usual empty-prompt negative side. If the erased weights can still draw the
concept under some conditioning, this finds it (Concept-Inversion style, without the vocabulary bottleneck).
"""
from __future__ import annotations

import torch

from .base import Attack, diffusion_loss, encode, guided_diffusion_loss, register_attack


@register_attack("embedding")
class EmbeddingAttack(Attack):
    default_lr = 1e-2
    init_from = "concept"  # the concept prompt's conditioning

    def setup(self) -> None:
        with torch.no_grad():
            start = encode(self.pipe, [self.prompt if self.init_from == "concept" else ""]).detach().float()
        self.start = start
        with torch.no_grad():
            self.uncond = encode(self.pipe, [""]).detach()
        self.cond = torch.nn.Parameter(start.clone())
        self.opt = torch.optim.Adam([self.cond], lr=self.lr)
        L, D = start.shape[1:]
        src = repr(self.prompt) if self.init_from == "concept" else "the empty prompt"
        self.text = f"<learned conditioning: {L} positions x {D}, from {src}>"

    guided = True  # fit the classifier-free-guided prediction the sampler uses (False: the conditional one)

    def step(self) -> float:
        if self.guided:
            loss = guided_diffusion_loss(self.pipe, self.minibatch(), self.cond, self.uncond, self.guidance, self.gen)
        else:
            loss = diffusion_loss(self.pipe, self.minibatch(), self.cond, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last_loss = float(loss.detach())
        return self.last_loss

    def current(self):
        return self.text, None

    def conditioning(self) -> torch.Tensor:
        """The (1, L, D) text conditioning the attacked generations use now."""
        return self.cond.detach().clone()

    def describe(self) -> dict:
        with torch.no_grad():
            moved = float((self.cond - self.start).norm() / self.start.norm().clamp_min(1e-12))
        return {"name": self.name, "lr": self.lr, "positions": int(self.start.shape[1]), "init": self.init_from,
                "relative_change": moved}


@register_attack("embedding-neutral")
class NeutralEmbeddingAttack(EmbeddingAttack):
    init_from = "neutral"  # the empty prompt's conditioning: nothing of the concept's words to start from


@register_attack("embedding-plain")
class PlainEmbeddingAttack(EmbeddingAttack):
    guided = False
