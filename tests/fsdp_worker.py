"""Run by tests/test_fsdp.py: ``python fsdp_worker.py MODE OUT_DIR`` starts 2 CPU processes (gloo) under FSDP2.

``plain``: a LoRA-wrapped tiny Llama, attached and sharded with ``shard_``, trains a few SGD steps on its half of
each global batch; every rank saves its gates after every step, then the gated model's eval logits, the export
(rank 0) and a run resumed from a full state dict saved mid-pruning.

``lightning``: ``PruningCallback`` under Lightning's ``ModelParallelStrategy`` (FSDP2), with a checkpoint
mid-pruning and a resumed run; see :func:`lightning_main`.

The single-process reference (the same steps on the whole global batch) is :func:`train` without a process group.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import tiny_causal_lm, with_lora  # noqa: E402

import lightning_prune as lp  # noqa: E402
from lightning_prune.integrations.modules import motif_tokens  # noqa: E402
from lightning_prune.integrations.schedule import sampling_seed  # noqa: E402

WORLD = 2
STEPS = 4
GLOBAL_BATCH = 4


def build():
    model = with_lora(tiny_causal_lm("llama")).train()
    config = lp.L0Config(target_sparsity=0.3, structures=("heads", "ffn", "hidden"), warmup_steps=2, gate_lr=0.5)
    return model, lp.attach(model, config)


def batch(step: int, rank: int | None = None) -> torch.Tensor:
    """The global batch of ``step`` (``rank=None``) or the rank's half of it."""
    ids = motif_tokens(GLOBAL_BATCH, 12, 128, seed=100 + step)
    if rank is None:
        return ids
    per = GLOBAL_BATCH // WORLD
    return ids[rank * per : (rank + 1) * per]


def train(model, pruner, steps: range, rank: int | None = None, record=None) -> None:
    """SGD steps (no optimizer state, so a resume needs only the model's state dict)."""
    optimizer = torch.optim.SGD(pruner.param_groups(lr=0.05), lr=0.05)
    for step in steps:
        if rank is None:  # the single process uses the seed shard_ derives on every rank
            pruner.sample_seed = sampling_seed(0, pruner.pruning_step, 0)
        ids = batch(step, rank)
        loss = model(input_ids=ids, labels=ids).loss + pruner.penalty()
        loss.backward()
        optimizer.step()
        pruner.step()
        optimizer.zero_grad()
        if record is not None:
            record(step)


def gates(pruner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pruner.state.state_dict().items()}


def eval_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(7))


def plain_main(rank: int, out: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from lightning_prune.integrations.fsdp import shard_

    torch.manual_seed(0)
    model, pruner = build()
    sharded = shard_(model, pruner)
    history = {}
    train(model, pruner, range(STEPS), rank, record=lambda s: history.__setitem__(s, gates(pruner)))
    torch.save(history, out / f"gates_rank{rank}.pt")

    model.eval()
    with torch.no_grad():
        gated = model(input_ids=eval_ids()).logits
        pruner.phase = "dense"
        dense = model(input_ids=eval_ids()).logits
        pruner.phase = "prune"
    sharded.save_compact(out / "compact")  # every rank gathers; rank 0 exports, checks and writes
    if rank == 0:
        with torch.no_grad():
            exported = lp.load_compact(out / "compact")(input_ids=eval_ids()).logits
        torch.save({"gated": gated, "dense": dense, "compact": exported}, out / "logits.pt")
    model.train()

    # resume: 2 steps, full state dict (rank 0), a fresh sharded model loads it, 2 more steps
    torch.manual_seed(0)
    model, pruner = build()
    shard_(model, pruner)
    train(model, pruner, range(2), rank)
    from lightning_prune.integrations.fsdp import sharding_of

    state = sharding_of(pruner).full_state_dict()
    torch.manual_seed(1)  # a different init: everything must come from the state dict
    model, pruner = build()
    shard_(model, pruner)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state, options=options)
    train(model, pruner, range(2, STEPS), rank)
    torch.save(gates(pruner), out / f"resumed_rank{rank}.pt")


def lightning_main(out: Path) -> None:
    """Fit 6 steps under ``ModelParallelStrategy`` (checkpoints every 3 steps, export at the end), then resume from
    the step-3 checkpoint in a fresh trainer; every rank writes its gates after each fit."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning_helpers import LitLM, config, loader

    from lightning_prune.integrations.fsdp import shard_

    class ShardedLitLM(LitLM):
        def configure_model(self) -> None:
            shard_(self.model, mesh=self.device_mesh["data_parallel"])

    def fit(ckpt_path=None, export_dir=None):
        L.seed_everything(0, verbose=False)
        module = ShardedLitLM(tiny_causal_lm("llama").train())
        callback = lp.PruningCallback(config(), export_dir=export_dir, dense_steps=1, log_stats=False)
        checkpoints = ModelCheckpoint(dirpath=out / "ckpt", every_n_train_steps=3, save_top_k=-1)
        trainer = L.Trainer(
            max_steps=6,
            accelerator="cpu",
            devices=WORLD,
            strategy=ModelParallelStrategy(data_parallel_size=WORLD, tensor_parallel_size=1),
            callbacks=[callback, checkpoints],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(module, loader(num_samples=12, batch_size=2), ckpt_path=ckpt_path)  # 3 steps an epoch
        return trainer, callback

    trainer, callback = fit(export_dir=out / "compact")
    torch.save(gates(callback.pruner), out / f"lightning_rank{trainer.global_rank}.pt")
    first = sorted((out / "ckpt").iterdir())[0]
    trainer, callback = fit(ckpt_path=first)
    torch.save(gates(callback.pruner), out / f"lightning_resumed_rank{trainer.global_rank}.pt")
    # Lightning leaves its process group up; tear it down together, or gloo's threads can still be running a
    # collective when the interpreter exits ("terminate called without an active exception", exit -6).
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _worker(rank: int, mode: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    plain_main(rank, Path(out))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "plain":
        torch.multiprocessing.spawn(_worker, args=(mode, out, _free_port()), nprocs=WORLD)
    elif mode == "lightning":  # Lightning starts the second process itself (it reruns this script)
        torch.set_num_threads(1)
        lightning_main(Path(out))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
