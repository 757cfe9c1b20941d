"""The GPU checks in one command that fits a short lease (< 8 minutes on one H100/H200).

Runs each step as its own process with its own time limit (one slow step cannot eat the lease), keeps going
after a failure, and writes ``gpu_suite.json`` and ``gpu_suite.md`` (step, status, wall time, the step's last
lines) under ``--output``. Never needed by the tests; run it when a GPU is lent:

    python benchmarks/gpu_suite.py                 # every step
    python benchmarks/gpu_suite.py --dry-run       # the plan: commands and time limits
    python benchmarks/gpu_suite.py --only cuda_check overhead_1b
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Step:
    name: str
    what: str
    command: list[str]
    limit_s: int
    needs_gpus: int = 1


def plan(python: str = sys.executable) -> list[Step]:
    """The steps, in order of value: correctness first, then the figures docs/benchmarks.md is missing."""

    def script(name: str, *args: str) -> list[str]:
        return [python, str(HERE / name), *args]

    return [
        Step(
            "cuda_check",
            "every method x {bf16, fp32} trains on CUDA and exports through the check",
            script("cuda_check.py"),
            100,
        ),
        Step(
            "overhead_1b",
            "gated vs plain LoRA step time and peak memory, 1.1B Llama shape, bf16",
            script("training_overhead.py", "--big", "--dtype", "bfloat16", "--quick"),
            100,
        ),
        Step(
            "speedup_1b",
            "compact vs dense latency, 1.1B Llama shape, bf16",
            script("compact_speedup.py", "--big", "--dtype", "bfloat16", "--quick"),
            70,
        ),
        Step(
            "llm_quality_quick",
            "SmolLM2 fine-tune-and-prune vs LLM-Pruner-style baselines, quick mode",
            script("llm_quality.py", "--quick", "--output", "outputs/gpu_suite/llm_quality"),
            150,
        ),
        Step(
            "fsdp",
            "FSDP2 on 2 GPUs (NCCL, bf16): identical gates on every rank, masks applied, rank-0 export checked",
            script("fsdp_check.py", "--device", "cuda"),
            60,
            needs_gpus=2,
        ),
    ]


def run_step(step: Step, gpus: int) -> dict:
    if gpus < step.needs_gpus:
        return {
            **asdict(step),
            "status": f"skipped: needs {step.needs_gpus} GPUs, {gpus} present",
            "wall_s": 0.0,
            "tail": "",
        }
    start = time.perf_counter()
    try:
        done = subprocess.run(step.command, capture_output=True, text=True, timeout=step.limit_s)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = f"timed out after {step.limit_s}s"
        output = (
            (expired.stdout or b"").decode(errors="replace")
            if isinstance(expired.stdout, bytes)
            else (expired.stdout or "")
        )
    tail = "\n".join(output.strip().splitlines()[-25:])
    return {**asdict(step), "status": status, "wall_s": round(time.perf_counter() - start, 1), "tail": tail}


def markdown(results: list[dict], device: str) -> str:
    lines = [f"# GPU suite on {device}", "", "| step | what | status | wall (s) |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['what']} | {r['status']} | {r['wall_s']} |" for r in results]
    for r in results:
        if r["tail"]:
            lines += ["", f"## {r['name']}", "", "```", r["tail"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, steps: list[Step] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/gpu_suite"))
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (names from --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    steps = plan() if steps is None else steps
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            parser.error(f"unknown step(s) {unknown}; the steps are {[s.name for s in steps]}")
        steps = [s for s in steps if s.name in args.only]
    budget = sum(s.limit_s for s in steps)
    if args.dry_run:
        for s in steps:
            print(f"{s.name:<18} {s.limit_s:>4}s  {' '.join(s.command)}")
        print(f"at most {budget}s in all")
        return []
    import torch

    gpus = torch.cuda.device_count()
    device = torch.cuda.get_device_name(0) if gpus else "no GPU (CPU only)"
    print(f"GPU suite on {device} ({gpus} GPU(s)); at most {budget}s", flush=True)
    results = []
    for step in steps:
        result = run_step(step, gpus)
        results.append(result)
        print(f"{step.name:<18} {result['status']:<28} {result['wall_s']:>6}s", flush=True)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "gpu_suite.json").write_text(json.dumps({"device": device, "steps": results}, indent=2))
    (args.output / "gpu_suite.md").write_text(markdown(results, device))
    print(f"wrote {args.output / 'gpu_suite.json'} and gpu_suite.md")
    return results


if __name__ == "__main__":
    main()
