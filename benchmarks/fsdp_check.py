"""FSDP2 on 2 devices: the gated model trains under ``shard_`` with identical gates on every rank and exports.

On the GPU suite's 2-GPU machines (``--device cuda``, NCCL) this is the FSDP step; ``--device cpu`` runs the same
program with gloo (what tests/test_fsdp.py covers in more depth). A Llama-shaped model with LoRA, L0 gates on
heads + FFN + hidden, a few AdamW steps on each rank's half of the global batch; it checks after every step that
the gates and multipliers are identical on all ranks (all-gathered), that the masks change the output, and that
rank 0's export from the full state dict computes what the gated model computes.

    python benchmarks/fsdp_check.py --device cuda     # 2 GPUs
    python benchmarks/fsdp_check.py --device cpu      # 2 CPU processes
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import llama, lora  # noqa: E402

WORLD = 2


def _check(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    import lightning_prune as lp
    from lightning_prune.integrations.fsdp import shard_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=WORLD)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = lora(llama(hidden=args.width, heads=args.width // 32, kv_heads=args.width // 64,
                       ffn=int(2.6875 * args.width), seed=0, device=device, dtype=dtype)).train()  # fmt: skip
    pruner = lp.attach(model, lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn", "hidden"), warmup_steps=2))
    sharded = shard_(model, pruner)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3))
    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        ids = torch.randint(0, 2000, (2 * WORLD, args.seq), generator=gen)[rank::WORLD].to(device)
        loss = model(input_ids=ids, labels=ids).loss.float() + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad(set_to_none=True)
        flat = torch.cat([p.detach().float().flatten() for p in pruner.state.parameters()]).to(device)
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        if not all(torch.equal(gathered[0], g) for g in gathered):
            raise RuntimeError(f"step {step}: the gates differ across ranks")
    model.eval()
    ids = torch.randint(0, 2000, (2, args.seq), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        gated = model(input_ids=ids).logits.float()
        pruner.phase = "dense"
        dense = model(input_ids=ids).logits.float()
        pruner.phase = "prune"
    if torch.equal(gated, dense):
        raise RuntimeError("the masks do not change the output: they are not applied under FSDP")
    sharded.save_compact(Path(out) / "compact")  # every rank: full state dict; rank 0 exports, checks, writes
    if rank == 0:
        report = lp.load_compact(Path(out) / "compact").lightning_prune_report
        print(f"fsdp check ({args.device}, {WORLD} ranks, {args.steps} steps): gates identical on every rank; "
              f"export {report.summary()}", flush=True)  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < WORLD:
        raise SystemExit(f"--device cuda needs {WORLD} GPUs, found {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory() as out:
        torch.multiprocessing.spawn(_check, args=(args, _free_port(), out), nprocs=WORLD)


if __name__ == "__main__":
    main()
