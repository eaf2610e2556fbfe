"""Several processes (``accelerate launch --multi_gpu --num_processes N``): who does which share of an erasure.

- generation (forget, anchor and retain sets): each process generates its share of the generation batches (whole
  batches: each image bitwise as with one process); all gather them;
- per-concept forget gradients (joint erasure): each process computes its share of the concepts and broadcasts them;
- training: every micro-batch is split between the processes; each process computes the loss on its share
  (weighted by its share of the batch), and accelerate sums the trained parameters' gradients and the loss;
- method setup (SVD and subspaces): computed on every process from the same gathered data, then made bitwise the
  main process's by a broadcast;
- only the main process writes the delta (atomically), the others wait for it.

With one process none of this runs: a single-process erasure takes exactly its old code path.
"""
from __future__ import annotations

import os

import torch


def launched() -> bool:
    """Inside a launch of several processes (accelerate launch / torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """The main process of a launch (or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def several(accelerator) -> bool:
    return accelerator is not None and accelerator.num_processes > 1


def share(accelerator, n: int) -> slice:
    """This process's contiguous share of range(n), as accelerate's ``split_between_processes`` deals it (the
    first n % N processes get one item more)."""
    with accelerator.split_between_processes(list(range(n))) as mine:
        return slice(mine[0], mine[-1] + 1) if mine else slice(0, 0)


def gather_list(items: list) -> list:
    """Every process's ``items`` (CPU tensors or plain objects), concatenated in process order, on every process."""
    from accelerate.utils import gather_object

    return gather_object(list(items))


def gather_shares(accelerator, n: int, compute) -> list[dict[str, torch.Tensor]]:
    """``[compute(i) for i in range(n)]`` (each a dict of tensors, e.g. one concept's forget gradients), each process
    computing its share; every result is then broadcast by the process that computed it, tensor by tensor on the
    device (no copy through the host), so every process holds all of them, bitwise."""
    from accelerate.utils import broadcast

    sl = share(accelerator, n)
    mine = [compute(i) for i in range(n)[sl]]
    spans = gather_list([(sl.start, sl.stop)])  # every process's share, in process order
    metas = gather_list([{k: (tuple(v.shape), v.dtype) for k, v in r.items()} for r in mine])
    out = []
    for i in range(n):
        owner = next(p for p, (a, b) in enumerate(spans) if a <= i < b)
        r = mine[i - sl.start] if owner == accelerator.process_index else {
            k: torch.empty(shape, dtype=dt, device=accelerator.device) for k, (shape, dt) in metas[i].items()}
        for k in sorted(r):
            broadcast(r[k], from_process=owner)
        out.append(r)
    return out


def sum_gradients(accelerator, params: list[torch.Tensor], loss: float) -> float:
    """Sum every parameter's gradient and the step's loss over the processes (one all-reduce, by accelerate).
    Returns the summed loss; every process ends with the same gradients."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dev = grads[0].device
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss], dtype=torch.float32, device=dev)])
    flat = accelerator.reduce(flat, reduction="sum")
    off = 0
    for p, g in zip(params, grads):
        p.grad = flat[off : off + g.numel()].view_as(g).to(g.dtype)
        off += g.numel()
    return float(flat[-1])


def sync_from_main(accelerator, tensors: dict[str, torch.Tensor]) -> None:
    """Overwrite ``tensors`` in place with the main process's (same names and shapes on every process, else a
    RuntimeError on every process): the method's subspaces and trainable parameters are then bitwise identical."""
    from accelerate.utils import broadcast

    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    if len(set(map(repr, gather_list([shapes])))) != 1:
        raise RuntimeError("the processes built different subspaces (ranks or layers differ): run the erasure with one "
                           "process, or report this")
    if not tensors:
        return
    vals = list(tensors.values())
    flat = broadcast(torch.cat([v.detach().reshape(-1).float() for v in vals]).contiguous(), from_process=0)
    off = 0
    with torch.no_grad():
        for v in vals:
            v.copy_(flat[off : off + v.numel()].view_as(v).to(v.dtype))
            off += v.numel()


def finish() -> None:
    """End a launch of several processes: wait for every process, then close the process group (a process that
    exits with it open aborts)."""
    if not launched():
        return
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()
