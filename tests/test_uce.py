"""UCE: the closed-form cross-attention edit solves its least-squares problem and runs as a method of erase()."""
import torch
import torch.nn as nn

from semu_diffusion import erase
from semu_diffusion.methods import get_method
from semu_diffusion.delta import read_delta


class _Attn(nn.Module):
    def __init__(self, d_in=8, d_out=6):
        super().__init__()
        self.to_k = nn.Linear(d_in, d_out, bias=False)
        self.to_v = nn.Linear(d_in, d_out, bias=False)


def test_uce_solution_meets_its_normal_equations_and_maps_erased_to_anchor():
    torch.manual_seed(0)
    unet = nn.ModuleDict({"attn2": _Attn()})
    names = ["attn2.to_k", "attn2.to_v"]
    erase_e, anchor_e, keep = torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(6, 4, 8)
    m = get_method("uce")(preserve_scale=1.0, lamb=0.1)
    delta = m.edit(unet, names, erase_e, [3, 3], anchor_e, [3, 3], keep)
    C, Cs, P = erase_e.reshape(-1, 8).double(), anchor_e.reshape(-1, 8).double(), keep.reshape(-1, 8).double()
    for n in names:
        W0 = dict(unet.named_modules())[n].weight.double()
        W = W0 + delta.dense[n].double()
        # gradient of the objective at W is zero
        g = (W @ C.T - W0 @ Cs.T) @ C + (W - W0) @ (P.T @ P) + 0.1 * (W - W0)
        assert g.abs().max() < 1e-5  # (the delta is stored in float32)
        # erased embeddings move towards the anchor's outputs, kept ones move far less than they would unprotected
        assert ((W @ C.T - W0 @ Cs.T).norm() / (W0 @ C.T - W0 @ Cs.T).norm()) < 0.9
        assert ((W - W0) @ P.T).norm() / (W0 @ P.T).norm() < 0.6
    free = get_method("uce")(preserve_scale=0.0, lamb=1e-4).edit(unet, names, erase_e, [3, 3], anchor_e, [3, 3], None)
    for n in names:
        W0 = dict(unet.named_modules())[n].weight.double()
        W = W0 + free.dense[n].double()
        assert ((W @ C.T - W0 @ Cs.T).norm() / (W0 @ C.T - W0 @ Cs.T).norm()) < 0.05  # 8 tokens in 8 dims: exact


def test_uce_erase_edits_only_cross_attention_kv(random_pipe, tmp_path):
    w0 = {k: v.clone() for k, v in random_pipe.unet.state_dict().items()}
    res = erase("star", pipe=random_pipe, method="uce", out=tmp_path / "u.safetensors", log=lambda *a: None)
    d, prov = read_delta(tmp_path / "u.safetensors")
    assert d.dense and not d.lora and all(n.split(".")[-1] in ("to_k", "to_v") and ".attn2." in n for n in d.dense)
    assert prov["method"] == "uce" and res.stats["steps_run"] == 0
    assert all(torch.equal(v, w0[k]) for k, v in random_pipe.unet.state_dict().items())
    assert max(float(x.abs().max()) for x in d.dense.values()) > 0


def test_uce_erases_several_concepts_in_one_solve(random_pipe, tmp_path):
    from semu_diffusion import erase_concepts

    res = erase_concepts(["star", "heart"], pipe=random_pipe, method="uce", out=tmp_path / "u2.safetensors",
                         progress=False, log=lambda *a: None)
    d, prov = read_delta(tmp_path / "u2.safetensors")
    assert prov["concepts"] == ["star", "heart"] and prov["multi_concept"]["n_concepts"] == 2
    assert len(set(prov["anchors"])) == 2 and not set(prov["anchors"]) & {"star", "heart"}
    assert d.dense and res.stats["steps_run"] == 0
