"""The method contract: given the forget gradient over target weights, make some parameters trainable,
train them with the trainer's objective, and export the weight change as a ``Delta``."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn


@dataclass
class MethodConfig:
    """Knobs shared by methods; each method documents which it reads."""

    tau: float = 0.95
    r_min: int = 1  # 0 allowed: layers then may get rank 0 and stay frozen (recorded as frozen_layers)
    r_max: int | None = None
    project: bool = True
    conv_mode: str = "flat"  # "flat" | "per-channel"
    retain_energy: float = 0.0  # SEMU: remove from the forget gradient the retain gradient's directions holding this
    retain_side: str = "in"  # share of its energy, on the input side (in), output side (out) or both

    def __post_init__(self):
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.r_min < 0:
            raise ValueError("r_min must be >= 0 (0 lets a layer whose energy rule gives no component freeze, as the "
                             "official SEMU code; such layers are listed in the delta's provenance)")
        if self.r_max is not None and self.r_max < self.r_min:
            raise ValueError("r_max must be >= r_min")
        if self.conv_mode not in ("flat", "per-channel"):
            raise ValueError("conv_mode must be 'flat' or 'per-channel'")
        if not 0 <= self.retain_energy < 1:
            raise ValueError(f"retain_energy must be in [0, 1), got {self.retain_energy}")
        if self.retain_side not in ("in", "out", "both"):
            raise ValueError("retain_side must be 'in', 'out' or 'both'")


@dataclass
class Delta:
    """A weight change of UNet modules.

    format "lora": ``lora[name] = (B, A)`` with dW = B @ A (A reshaped (r, in, kh, kw) for convs);
    format "dense": ``dense[name] = dW`` (the full weight shape), optionally ``dense_bias[name] = db`` (the
    module's bias shape; dense and mixed formats only, never in a LoRA-only delta).
    """

    format: str
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)
    dense_bias: dict[str, torch.Tensor] = field(default_factory=dict)

    def modules(self) -> list[str]:
        return sorted(set(self.lora) | set(self.dense) | set(self.dense_bias))

    def delta_weight(self, name: str) -> torch.Tensor:
        if name in self.lora:
            B, A = self.lora[name]
            return (B.reshape(B.shape[0], -1) @ A.reshape(A.shape[0], -1))
        return self.dense[name]

    def numel(self) -> int:
        return (sum(B.numel() + A.numel() for B, A in self.lora.values()) + sum(d.numel() for d in self.dense.values())
                + sum(b.numel() for b in self.dense_bias.values()))


class Method:
    """Base class. Subclasses set ``needs_gradient`` and implement ``setup`` and ``export``."""

    name: str = "base"
    needs_gradient: bool = True
    objective: str = "remap"  # or "esd"

    def __init__(self, config: MethodConfig | None = None, **options):
        self.config = config or MethodConfig()
        self.options = options
        self.info: dict = {}

    def gradient_targets(self, unet: nn.Module, targets: list[str]) -> list[str]:
        """Weights whose forget gradient the method needs (the target modules by default)."""
        return targets

    needs_loss_fn: bool = False  # setup() gets a closure returning a fresh forget loss (for Hessian estimates)

    @property
    def needs_retain_gradient(self) -> bool:
        """setup() gets the gradient of the same loss on the retain set (SEMU's retain-aware subspace)."""
        return False

    def setup(self, unet: nn.Module, targets: list[str], grads: dict[str, torch.Tensor] | None, loss_fn=None,
              retain_grads: dict[str, torch.Tensor] | None = None, consume: bool = False) -> list[nn.Parameter]:
        """Prepare ``unet`` for training and return the trainable parameters. ``consume``: the method may pop the
        entries of ``grads`` it has used (erase() passes True: it needs them no more, and memory is freed sooner)."""
        raise NotImplementedError

    def export(self, unet: nn.Module) -> Delta:
        raise NotImplementedError

    def restore(self, unet: nn.Module) -> None:
        """Return ``unet`` to its base weights and modules."""
        raise NotImplementedError

    def trainable_numel(self) -> int:
        return int(self.info.get("trainable_params", 0))
