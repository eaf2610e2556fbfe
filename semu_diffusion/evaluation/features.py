"""Image features for Fréchet distances, KID and CLIP score, computed batch by batch; reference statistics of a
folder of real images, cached by the folder's content hash."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .errors import JudgeUnavailable
from .judges.classifiers import to01
from .. import atomic

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ClipFeatures:
    """open_clip (or toy-CLIP) image embeddings: FD-CLIP, and CLIP score against the prompts."""

    def __init__(self, model: str = "toy", pretrained: str | None = None, device: str = "cpu", loaded=None):
        from .clipmodels import load_clip

        self.model, self.tokenizer, self.preprocess = loaded or load_clip(model, pretrained, device)
        self.device = device
        self.name = "clip:" + model + (f":{pretrained}" if pretrained else "")
        vs = getattr(self.model.visual, "image_size", 224)
        self.ref_size = int(vs if isinstance(vs, int) else vs[0])

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        x = self.preprocess(to01(images).to(self.device))
        return self.model.encode_image(x).float().cpu().numpy()

    @torch.no_grad()
    def clip_scores(self, feats: np.ndarray, prompts: list[str]) -> np.ndarray:
        from ..metrics import clip_score_from_features

        t = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device)).float().cpu()
        return clip_score_from_features(torch.from_numpy(feats), t).numpy()


class InceptionFeatures:
    """The standard FID Inception-v3 pool features (2048-d) via torchmetrics/torch-fidelity, from uint8 images."""

    name = "inception"
    ref_size = 299

    def __init__(self, device: str = "cpu"):
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except Exception:
            raise JudgeUnavailable("--fd inception needs torchmetrics and torch-fidelity: pip install "
                                   "'semu-diffusion[eval]' (or use --fd clip)") from None
        import contextlib
        import io

        try:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints its download attempt
                self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"]).to(device).eval()
        except Exception as e:
            ckpt = os.path.join(torch.hub.get_dir(), "checkpoints", "weights-inception-2015-12-05-6726825d.pth")
            raise JudgeUnavailable(f"the FID Inception weights are not in the torch hub cache ({type(e).__name__}): put "
                                   f"weights-inception-2015-12-05-6726825d.pth (torch-fidelity) at {ckpt}, or use --fd clip") from None
        self.device = device

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
        return self.net(x.to(self.device)).double().cpu().numpy()


def square_resize(im, size: int) -> np.ndarray:
    """Center-crop a PIL image to a square and resize it (bicubic, as clean-fid) -> uint8 (size,size,3)."""
    from PIL import Image

    im = im.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        im = im.resize((size, size), Image.BICUBIC)
    return np.asarray(im)


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); each must open as an image (one-line error naming it)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if len(files) < 2:
        raise ValueError(f"--real-images {root} holds {len(files)} png/jpg images: FID needs at least 2")
    for p in files:
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"--real-images: {p} is not a readable image ({type(e).__name__}): remove or replace it") from None
    return files


def folder_hash(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    d = os.environ.get("SEMU_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                                                          "semu-diffusion")
    return Path(d)


def stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(feats, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError("need a (n >= 2, d) feature matrix")
    return f.mean(0), np.cov(f, rowvar=False)


class RunningStats:
    """Mean and covariance accumulated batch by batch in float64 (np.cov's unbiased estimate)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def update(self, f: np.ndarray) -> None:
        f = np.asarray(f, np.float64)
        if self.s is None:
            self.s, self.ss = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        self.n += len(f)
        self.s += f.sum(0)
        self.ss += f.T @ f

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("need at least 2 feature rows")
        mu = self.s / self.n
        return mu, (self.ss - self.n * np.outer(mu, mu)) / (self.n - 1)


def reference_stats(folder: str | Path, extractor, batch_size: int = 64, keep: int = 10_000, files=None, log=None) -> dict:
    """{"mu", "sigma", "feats" (<= keep rows, for KID), "n", "hash"} of a folder of real images under ``extractor``;
    read batch by batch; cached under the semu-diffusion cache by (content hash, extractor)."""
    from PIL import Image

    root = Path(folder)
    files = files or list_images(root)
    key = f"{folder_hash(files, root)}-{hashlib.sha256(f'{extractor.name}|{extractor.ref_size}'.encode()).hexdigest()[:10]}"
    f = cache_dir() / "real-stats" / f"{key}.npz"
    if f.exists():
        d = np.load(f)
        return {"mu": d["mu"], "sigma": d["sigma"], "feats": d["feats"], "n": int(d["n"]), "hash": key, "cached": True}
    rs, kept = RunningStats(), []
    rng = np.random.default_rng(0)
    keep_idx = set(rng.choice(len(files), size=min(keep, len(files)), replace=False).tolist())
    for i in range(0, len(files), batch_size):
        ims = []
        for p in files[i: i + batch_size]:
            try:
                with Image.open(p) as im:
                    ims.append(square_resize(im, extractor.ref_size))
            except OSError as e:
                raise ValueError(f"--real-images: {p} is not a readable image ({type(e).__name__}): remove or replace it") from None
        feats = extractor.features(np.stack(ims))
        rs.update(feats)
        kept += [feats[j - i] for j in range(i, i + len(ims)) if j in keep_idx]
    mu, sigma = rs.compute()
    out = {"mu": mu, "sigma": sigma, "feats": np.stack(kept).astype(np.float32), "n": len(files), "hash": key, "cached": False}
    f.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(f) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma, feats=out["feats"], n=len(files))
    (f.with_suffix(".json")).write_text(json.dumps({"folder": str(root.resolve()), "files": len(files),
                                                     "features": extractor.name}))
    return out


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel (x·y/d + 1)³, mean and std over
    random subsets (torchmetrics/torch-fidelity's definition)."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        return float("nan"), float("nan")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))
