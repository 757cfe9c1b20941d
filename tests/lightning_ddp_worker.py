"""Run by tests/test_lightning_ddp.py: ``python lightning_ddp_worker.py OUT_DIR``.

Fits a tiny Llama with PruningCallback under DDP on 2 CPU processes (gloo). Each rank writes its gate values
and how many times it called ``save_compact`` to ``OUT_DIR``; rank 0 exports to ``OUT_DIR/compact``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning_helpers import config, lit_llama, loader  # noqa: E402

import lightning_prune as lp  # noqa: E402
from lightning_prune.pruner import Pruner  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    calls = []
    original = Pruner.save_compact

    def counting_save_compact(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    Pruner.save_compact = counting_save_compact
    L.seed_everything(0, verbose=False)
    module = lit_llama()
    callback = lp.PruningCallback(config(), export_dir=out / "compact", dense_steps=1, log_stats=False)
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader(num_samples=16, batch_size=2))
    rank = trainer.global_rank
    torch.save({k: v.clone() for k, v in callback.pruner.state.state_dict().items()}, out / f"gates_rank{rank}.pt")
    (out / f"exports_rank{rank}.json").write_text(json.dumps({"save_compact_calls": len(calls)}))
    import torch.distributed as dist

    if dist.is_initialized():  # tear the process group down together (see tests/fsdp_worker.py)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
