"""Does the web app's Cancel free the GPU? Start the app on a model, run, cancel mid-run, compare device memory.

    python benchmarks/probes/app_cancel.py --model /path/to/sd-v1 --device cuda      # or --random sd-v1 (no weights)

Prints allocated/reserved bytes before the run, during it and after Cancel, and exits 1 when the memory
held after Cancel exceeds the idle level by more than --slack bytes (or the run did not stop).
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path


def memory(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return {"allocated": torch.cuda.memory_allocated(), "reserved": torch.cuda.memory_reserved()}
    return {"allocated": None, "reserved": None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a diffusers SD v1 folder or hub id")
    parser.add_argument("--random", choices=["tiny", "sd-v1"], help="build a random model of this size instead")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--slack", type=int, default=64 << 20, help="allowed growth in bytes (default 64 MiB)")
    args = parser.parse_args()
    from gradio_client import Client

    from suppresseot.api import SuppressEOT
    from suppresseot.app import App, launch_options

    work = Path(tempfile.mkdtemp(prefix="app-cancel-"))
    model_dir = args.model
    if args.random:
        from suppresseot.random_model import save_random_model

        tokenizer = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "clip-tokenizer"
        model_dir = save_random_model(work / "model", tokenizer, size=args.random)
    model = SuppressEOT.from_pretrained(model_dir, backend=args.backend, device=args.device)
    app = App(model, work / "runs")
    demo = app.build()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(**launch_options(work / "runs", port=port), prevent_thread_lock=True, quiet=True)
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    prompt = "A man with a beard wearing glasses and a hat in blue shirt"
    args_ = (prompt, [], "glasses", 2, 1.0, 0.8, 10, "soft-weight", args.steps)
    client.predict(*args_[:-1], 2, api_name="/generate")  # warm-up (kernels, allocator pools)
    idle = memory(args.device)
    job = client.submit(*args_, api_name="/generate")
    deadline = time.monotonic() + 600
    while (app.step is None or app.step[0] != "swr_ito_sampling" or app.step[1] < 6) and time.monotonic() < deadline:
        time.sleep(0.05)
    during = memory(args.device)
    cancelled_at, started = app.step, time.monotonic()
    job.cancel()
    while app.lock.locked() and time.monotonic() < started + 120:
        time.sleep(0.05)
    stop_seconds = time.monotonic() - started
    after = memory(args.device)
    report = {"device": args.device, "idle": idle, "during": during, "after_cancel": after,
              "cancel_requested_at": cancelled_at, "stopped_at": app.step, "seconds_to_stop": round(stop_seconds, 2),
              "stopped": not app.lock.locked()}
    print(json.dumps(report, indent=1))
    demo.close()
    ok = report["stopped"] and (after["allocated"] is None or after["allocated"] <= idle["allocated"] + args.slack)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
