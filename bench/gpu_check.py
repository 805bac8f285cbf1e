"""The CUDA paths in one run, for the day a GPU is lent (`make gpu-check`; at most 8 minutes on one H100).

    python -m bench.gpu_check

1. the tests marked `cuda` (pinned memory, the side stream and `record_stream`, bf16 and fp16 autocast
   with the loss scaler), which a machine without CUDA skips;
2. `bench.train_speed --device cuda`: DGL and full fine-tuning on ViT-B/32 (12 frames, 224 px, batch 32),
   step time, activation memory and the allocator's peak, the data path's wait share;
3. `bench.eval_speed --device cuda`: evaluation over 1,000 and 100,000 videos beside a matrix product.

Prints one JSON summary (each part's exit code and its figures; `ok` when all three ran and every check
held). Without CUDA it prints one line and exits 0. Each part has its own time limit, so the whole stays
within LIMITS' sum (450 s) plus start-up.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

LIMITS = {"tests": 150, "train": 240, "eval": 60}  # seconds per part


def run(args: list[str], limit: int) -> tuple[int, str]:
    """Exit code (124 when cut off at `limit` seconds) and stdout of `python *args`; stderr passes through."""
    try:
        done = subprocess.run([sys.executable, *args], stdout=subprocess.PIPE, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or ""
    return done.returncode, done.stdout


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def cuda_tests() -> dict:
    code, out = run(["-m", "pytest", "-q", "-p", "no:xdist", "-m", "cuda", "tests"], LIMITS["tests"])
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error)", out)}
    return {"rc": code, **counts}


def train_speed() -> dict:
    code, out = run(["-m", "bench.train_speed", "--device", "cuda", "--batch", "32", "--steps", "4"], LIMITS["train"])
    report = last_json(out)
    if not report:
        return {"rc": code}
    runs = report["runs"]
    step = {
        f"{m}{'' if on == 'off' else '_checkpointing'}": runs[m][f"checkpointing_{on}"]["step_s"]
        for m in ("dgl", "full")
        for on in ("off", "on")
    }
    return {
        "rc": code,
        "device": report["device"],
        "amp": report["amp"],
        "batch": report["batch"],
        "step_s": step,
        "dgl_over_full_step_time": round(step["dgl"] / step["full"], 3),
        "activation_mib_per_video": {
            m: runs[m]["checkpointing_off"]["activation_mib_per_video"] for m in ("dgl", "full")
        },
        "cuda_peak_mib_per_video": {
            m: runs[m]["checkpointing_off"].get("cuda_peak_mib_per_video") for m in ("dgl", "full")
        },
        "data_wait_share": report["data_path"]["wait"]["after"]["wait_share"],
        "checks_within": {name: c["within"] for name, c in report["checks"].items()},
    }


def eval_speed() -> dict:
    code, out = run(["-m", "bench.eval_speed", "--device", "cuda", "--videos", "1000", "100000"], LIMITS["eval"])
    report = last_json(out)
    return {
        "rc": code,
        **(
            {
                "ratio_to_matmul": {r["videos"]: r["ratio_to_matmul"] for r in report["runs"]},
                "seconds": {r["videos"]: r["seconds"] for r in report["runs"]},
                "limit": report["runs"][0]["limit"],
            }
            if report
            else {}
        ),
    }


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: skipped, no CUDA device visible (torch.cuda.is_available() is False)")
        return
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda_tests": cuda_tests(),
        "train": train_speed(),
        "eval": eval_speed(),
    }
    evaluated = summary["eval"].get("ratio_to_matmul", {})
    summary["ok"] = (
        all(part["rc"] == 0 for part in (summary["cuda_tests"], summary["train"], summary["eval"]))
        and summary["cuda_tests"].get("failed", 0) == 0
        and all(summary["train"].get("checks_within", {"missing": False}).values())
        and bool(evaluated)
        and all(r <= summary["eval"]["limit"] for r in evaluated.values())
    )
    print(json.dumps(summary, indent=1))
    sys.exit(0 if summary["ok"] else 1)


if __name__ == "__main__":
    main()
