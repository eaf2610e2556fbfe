"""The attack contract and the parts every attack shares.

An attack gets the (erased) pipeline, the concept, a set of concept latents (the images it tries to recover) and a
step budget. It optimises something the attacker controls (token embeddings, prompt tokens) and, at the checkpoints
the runner asks for, exposes the prompt it would use now: :meth:`Attack.current` returns the prompt text and the
embedding vectors of its placeholder tokens. The runner generates and judges the images; the attack never sees them.

Placeholder tokens are rare single-token words of the model's own vocabulary whose input embeddings are replaced,
while a :class:`TokenSlots` is active, by vectors the attack chooses (a forward hook on the text encoder's token
embedding). The pipeline's weights are never modified.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

_REGISTRY: dict[str, type["Attack"]] = {}


def register_attack(name: str):
    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_attacks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_attack(name: str) -> type["Attack"]:
    _load_builtin()
    if name not in _REGISTRY:
        from .options import AttackOptionError

        raise AttackOptionError(f"unknown attack {name!r}: use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    from . import control, embedding, inversion, prompt_search  # noqa: F401


def placeholder_ids(tokenizer, k: int, avoid: set[str] = frozenset()) -> list[int]:
    """k rare single-token words of the vocabulary (the last merges of the BPE: letters only, 3+ characters, each
    tokenising back to itself alone), none of them in ``avoid``. Deterministic for a tokenizer."""
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    out: list[int] = []
    for tok, i in sorted(vocab.items(), key=lambda kv: -kv[1]):
        if i in specials or not tok.endswith("</w>"):
            continue
        w = tok[: -len("</w>")]
        if len(w) < 3 or not w.isascii() or not w.isalpha() or not w.islower() or w in avoid:
            continue
        if tokenizer(w, add_special_tokens=False).input_ids != [i]:
            continue
        out.append(i)
        if len(out) == k:
            return out
    raise ValueError(f"the tokenizer has fewer than {k} usable placeholder words: lower --tokens")


class TokenSlots:
    """While active (``with``), the input embeddings of the placeholder token ids are ``self.vectors`` (k, D)."""

    def __init__(self, pipe, ids: list[int]):
        self.pipe, self.ids = pipe, list(ids)
        self.words = [pipe.tokenizer.convert_ids_to_tokens(i).replace("</w>", "") for i in self.ids]
        self.vectors: torch.Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output):
        if self.vectors is None:
            return output
        ids = inputs[0]
        out = output.clone()
        for j, i in enumerate(self.ids):
            m = ids == i
            if m.any():
                out[m] = self.vectors[j].to(out.dtype)
        return out

    def __enter__(self):
        self._handle = self.pipe.text_encoder.get_input_embeddings().register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False

    @property
    def text(self) -> str:
        return " ".join(self.words)


def embedding_matrix(pipe) -> torch.Tensor:
    return pipe.text_encoder.get_input_embeddings().weight


def encode(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states with gradients (the pipeline's own encode runs under no_grad)."""
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def diffusion_loss(pipe, latents: torch.Tensor, cond: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The standard denoising loss of the pipeline's UNet on ``latents`` under text condition ``cond`` (1 or n rows)."""
    sch = pipe.scheduler
    n = len(latents)
    dev = pipe.unet.device
    z0 = latents.to(dev, pipe.unet.dtype)
    noise = torch.randn(z0.shape, generator=gen).to(dev, z0.dtype)
    t = torch.randint(0, sch.config.num_train_timesteps, (n,), generator=gen).to(dev)
    zt = sch.add_noise(z0, noise, t)
    if getattr(sch.config, "prediction_type", "epsilon") == "v_prediction":
        target = sch.get_velocity(z0, noise, t)
    else:
        target = noise
    c = cond.expand(n, -1, -1) if cond.shape[0] == 1 else cond
    pred = pipe.unet(zt, t, encoder_hidden_states=c.to(pipe.unet.dtype)).sample
    return F.mse_loss(pred.float(), target.float())


def guided_diffusion_loss(pipe, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance: float,
                          gen: torch.Generator) -> torch.Tensor:
    """The denoising loss of the classifier-free-guided prediction e_u + w (e_c - e_u), the one the sampler uses
    (the unconditional pass carries no gradient)."""
    sch = pipe.scheduler
    n, dev = len(latents), pipe.unet.device
    z0 = latents.to(dev, pipe.unet.dtype)
    noise = torch.randn(z0.shape, generator=gen).to(dev, z0.dtype)
    t = torch.randint(0, sch.config.num_train_timesteps, (n,), generator=gen).to(dev)
    zt = sch.add_noise(z0, noise, t)
    target = sch.get_velocity(z0, noise, t) if getattr(sch.config, "prediction_type", "epsilon") == "v_prediction" else noise
    with torch.no_grad():
        eu = pipe.unet(zt, t, encoder_hidden_states=uncond.expand(n, -1, -1).to(pipe.unet.dtype)).sample.float()
    ec = pipe.unet(zt, t, encoder_hidden_states=cond.expand(n, -1, -1).to(pipe.unet.dtype)).sample.float()
    return F.mse_loss(eu + guidance * (ec - eu), target.float())


def random_vectors(pipe, k: int, seed: int) -> torch.Tensor:
    """k random directions scaled to the mean norm of the vocabulary's embeddings (the init of inversion and the
    random control: same seed, same vectors)."""
    E = embedding_matrix(pipe).detach().float()
    g = torch.Generator("cpu").manual_seed(int(seed) + 7919)
    v = torch.randn((k, E.shape[1]), generator=g)
    v = v / v.norm(dim=1, keepdim=True) * E.norm(dim=1).mean().cpu()
    return v.to(E.device)


class Attack:
    """Base class. Subclasses set ``default_lr`` and implement :meth:`setup`, :meth:`step`, :meth:`current`."""

    name = "attack"
    default_lr = 1e-2
    trains = True  # False: nothing is optimised (the control)
    guidance = 7.5  # classifier-free guidance of the attacked generations (the runner sets it)

    def __init__(self, pipe, concept: str, prompt: str, latents: torch.Tensor, n_tokens: int, lr: float | None,
                 batch_size: int, seed: int, avoid_words: set[str]):
        self.pipe, self.concept, self.prompt = pipe, concept, prompt
        self.latents, self.k, self.lr = latents, n_tokens, lr or self.default_lr
        self.batch_size, self.seed = batch_size, seed
        self.slots = TokenSlots(pipe, placeholder_ids(pipe.tokenizer, n_tokens, avoid_words))
        self.gen = torch.Generator("cpu").manual_seed(int(seed))
        self.last_loss = float("nan")

    def minibatch(self) -> torch.Tensor:
        idx = torch.randint(0, len(self.latents), (min(self.batch_size, len(self.latents)),), generator=self.gen)
        return self.latents[idx]

    def setup(self) -> None:
        pass

    def step(self) -> float:
        """One optimisation step; returns its loss."""
        raise NotImplementedError

    def descend(self, vectors: torch.Tensor) -> float:
        """One Adam step of the diffusion loss on a concept minibatch with the placeholder tokens set to ``vectors``."""
        self.slots.vectors = vectors
        with self.slots:
            cond = encode(self.pipe, [self.text])
        loss = diffusion_loss(self.pipe, self.minibatch(), cond, self.gen)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.last_loss = float(loss.detach())
        return self.last_loss

    def current(self) -> tuple[str, torch.Tensor | None]:
        """(prompt text with the placeholder words, their vectors) the attack would use now."""
        raise NotImplementedError

    def conditioning(self) -> torch.Tensor | None:
        """A whole (1, L, D) text conditioning to generate with instead of the prompt (None: use the prompt)."""
        return None

    def describe(self) -> dict:
        return {"name": self.name, "lr": self.lr, "tokens": self.k}


def finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def image_grid(images: np.ndarray, cols: int = 8) -> np.ndarray:
    n, h, w, c = images.shape
    cols = min(cols, n)
    rows = -(-n // cols)
    g = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, cols)
        g[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = im
    return g
