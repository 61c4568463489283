"""Where the Jittor backend's time goes: one UNet forward (batch 2, no grad) and one forward+backward to the
text embedding (batch 1: the UNet part of an ITO or null-text iteration), wall clock, then jittor's profiler on
each: its most expensive ops and a table by op kind (cuDNN convolution, cuBLAS matmul, fused elementwise,
reductions, transposes, ...) with each kind's op count and time. The profiler synchronizes after every op, so an
op's time is its launch plus its GPU work; what the wall clock has beyond their sum is jittor's executor between
ops. Forwards at batch 1, 2 and 4 split host from GPU time another way: where the time barely grows with the
batch, the host's work per op is what the GPU waits for (the floor), and the growth is the GPU's share. Usage (on
the GPU, in the jittor environment; see benchmarks/gpu_bench.sh):

    python benchmarks/probes/profile_jittor.py --model-dir .bench/random-sd-v1 [--top 25] [--static] [--out DIR]

``--out`` also writes the op-kind tables as ``DIR/profile_jittor_ops.md``.

``--static`` also times both through ``jittor.vcompiler.build`` (jittor's static-graph cache: the fused graph
recorded once per input signature and replayed), with the timestep and loss target as Vars so that one graph
serves every step, and prints how far its results are from the eager ones.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from suppresseot.backends.jittor.backend import JittorBackend  # noqa: E402


def wall_ms(jt, fn, repeats: int) -> float:
    fn()
    jt.sync_all(True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        jt.sync_all(True)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def top_ops(report: list, top: int) -> list[str]:
    """jittor's profiler rows (a header, then one row per op) sorted by total time."""
    if not report:
        return ["(empty profiler report)"]
    header, rows = report[0], report[1:]
    try:
        column = header.index("TotalTime")
        rows = sorted(rows, key=lambda r: float(r[column]), reverse=True)
    except (ValueError, IndexError, TypeError):
        pass
    keep = [i for i, name in enumerate(header) if name in ("Name", "Count", "TotalTime", "AvgTime", "InOut")]
    return ["\t".join(str(r[i])[:90] for i in keep) for r in [header, *rows[:top]]]


def op_kind(name: str) -> str:
    """A profiler row's op (a fused op's key lists its parts as ``opkeyN:part``) as a kind to sum over."""
    parts = set(re.findall(r"opkey\d+:(\w+)", name)) or {name.split("\u00ab")[0]}
    single = next(iter(parts)) if len(parts) == 1 else ""
    if single.startswith("cudnn_conv"):
        return "cuDNN convolution" + single[len("cudnn_conv"):].replace("_", " ")
    if single.startswith("cublas"):
        return "cuBLAS matmul"
    if single in ("fuse_transpose", "transpose", "cutt_transpose"):
        return "transpose"
    if single in ("getitem", "setitem"):
        return single
    if single == "code":
        return "jt.code kernel (softmax, ...)"
    if "reduce" in parts or "reindex_reduce" in parts:
        return "reduction (fused)" if "reindex" not in parts else "reindex + reduction (fused)"
    if "reindex" in parts:
        return "reindex (fused: pad, upsample, concat, ...)"
    if parts <= {"binary", "unary", "ternary", "broadcast_to", "array", "where", "random"}:
        return "elementwise (fused)"
    return "+".join(sorted(parts))


def op_kinds(report: list) -> list[tuple[str, int, float]]:
    """(kind, ops, milliseconds) from jittor's profiler rows, most expensive first."""
    if len(report) < 2:
        return []
    header = report[0]
    name, count, total = (header.index(c) for c in ("Name", "Count", "TotalTime"))
    kinds: dict[str, list] = {}
    for row in report[1:]:
        entry = kinds.setdefault(op_kind(str(row[name])), [0, 0.0])
        entry[0] += int(float(row[count]))
        entry[1] += float(row[total]) / 1e6  # nanoseconds
    return sorted(((k, n, ms) for k, (n, ms) in kinds.items()), key=lambda r: -r[2])


def kind_table(title: str, report: list, wall: float) -> str:
    """Markdown: ops and time by kind, their sum against the unprofiled wall clock."""
    rows = op_kinds(report)
    ops, op_ms = sum(r[1] for r in rows), sum(r[2] for r in rows)
    lines = [f"### {title}", "", f"{ops} ops; their time (launch + GPU work, each synchronized) {op_ms:.1f} ms; "
             f"wall clock unprofiled {wall:.1f} ms", "", "| op kind | ops | ms | share | us/op |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {n} | {ms:.2f} | {ms / max(op_ms, 1e-9):.0%} | {1e3 * ms / max(n, 1):.1f} |" for k, n, ms in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--static", action="store_true", help="also time jittor.vcompiler.build's replayed graphs")
    p.add_argument("--out", type=Path, help="write the op-kind tables to OUT/profile_jittor_ops.md")
    args = p.parse_args()
    backend = JittorBackend(args.model_dir, device=args.device)
    jt = backend.jt
    rng = np.random.default_rng(0)
    embedding = backend.encode_text([49406] + [320] * 8 + [49407] * 68)
    hidden = embedding.shape[-1]
    latent1 = backend.from_numpy(rng.standard_normal((1, 4, 64, 64)).astype(np.float32))
    latent2 = backend.from_numpy(rng.standard_normal((2, 4, 64, 64)).astype(np.float32))
    context2 = backend.cat([embedding, embedding])
    latent4, context4 = backend.cat([latent2, latent2]), backend.cat([context2, context2])
    target = backend.from_numpy(rng.standard_normal((1, 4, 64, 64)).astype(np.float32))
    print(f"jittor {jt.__version__}, device {backend.device}, text hidden {hidden}", flush=True)

    def forward():
        with jt.no_grad():
            backend.unet(latent2, 501, context2).sync()

    def forward_backward():
        def loss(x):
            return ((backend.unet(latent1, 501, x) - target) ** 2).mean(), None

        _, _, grad = backend.value_and_grad(loss, embedding)
        grad.sync()

    for batch, latent, context in ((1, latent1, embedding), (4, latent4, context4)):
        def forward_at(latent=latent, context=context):
            with jt.no_grad():
                backend.unet(latent, 501, context).sync()
        print(f"forward batch {batch}: {wall_ms(jt, forward_at, args.repeats):.1f} ms (median of {args.repeats})",
              flush=True)
    tables = [f"# Jittor op kinds, {backend.device}, jittor {jt.__version__}, {args.model_dir.name}\n"]
    for name, fn in (("forward batch 2", forward), ("forward+backward batch 1", forward_backward)):
        ms = wall_ms(jt, fn, args.repeats)
        print(f"{name}: {ms:.1f} ms (median of {args.repeats})", flush=True)
        with jt.profile_scope() as report:
            fn()
            jt.sync_all(True)
        print("\n".join(top_ops(report, args.top)), flush=True)
        tables.append(kind_table(name, report, ms))
        print(tables[-1], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_jittor_ops.md").write_text("\n".join(tables))
    if args.static:
        static(backend, latent1, latent2, context2, embedding, target, args.repeats, latent4, context4)


def static(backend, latent1, latent2, context2, embedding, target, repeats: int, latent4, context4) -> None:
    """The same two passes as pure functions of Vars, replayed by jittor.vcompiler.build."""
    jt = backend.jt
    started = time.perf_counter()
    from jittor import vcompiler

    print(f"vcompiler module: {time.perf_counter() - started:.1f} s to build/load", flush=True)
    unet = backend.unet_model

    def forward(latent, t, context):
        with jt.no_grad():
            return unet(latent, t, context)

    def forward_backward(latent, t, x, target):
        x = x.detach()
        x.start_grad()  # as JittorBackend.value_and_grad: the embedding was made under no_grad
        loss = ((unet(latent, t, x) - target) ** 2).mean()
        return loss, jt.grad(loss, x)

    t = jt.array(np.array([501.0], dtype=np.float32))
    cases = (("forward batch 2", forward, (latent2, t, context2)), ("forward batch 4", forward, (latent4, t, context4)),
             ("forward+backward batch 1", forward_backward, (latent1, t, embedding, target)))
    for name, fn, inputs in cases:
        out = fn(*inputs)
        eager = [v.numpy() for v in (out if isinstance(out, (tuple, list)) else (out,))]
        try:
            built = vcompiler.build(fn)
            started = time.perf_counter()
            out = built(*inputs)
            replayed = [v.numpy() for v in (out if isinstance(out, (tuple, list)) else (out,))]
            first = time.perf_counter() - started
        except Exception as exc:  # noqa: BLE001 - a probe: report and go on
            print(f"static {name}: failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}", flush=True)
            continue
        errors = [float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30)) for a, b in zip(replayed, eager)]
        other = jt.array(np.array([301.0], dtype=np.float32))  # another step: the same graph must serve it
        check = built(inputs[0], other, *inputs[2:])
        expected = fn(inputs[0], other, *inputs[2:])
        check, expected = (c if isinstance(c, (tuple, list)) else (c,) for c in (check, expected))
        other_errors = [float(np.abs(a.numpy() - b.numpy()).max() / max(np.abs(b.numpy()).max(), 1e-30))
                        for a, b in zip(check, expected)]

        def replay():
            result = built(*inputs)
            jt.sync(list(result) if isinstance(result, (tuple, list)) else [result])

        ms = wall_ms(jt, replay, repeats)
        print(f"static {name}: {ms:.1f} ms (median of {repeats}; first call {first:.1f} s); max relative "
              f"difference to eager {max(errors):.2e}, at another timestep {max(other_errors):.2e}", flush=True)


if __name__ == "__main__":
    main()
