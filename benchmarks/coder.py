"""Coder benchmark: latency per text and throughput of every mode on a test set (default: the dev set).

    python benchmarks/coder.py [--testset FILE] [--modes retrieval,base,ft,rag,rag+ft,thinking] [--thinking-rows 5]

Each mode codes the whole file as one batch (`Coder.code_batch`, batch size as `oncocoder code` uses it) after a
warm-up text, so model loading and constraint compilation are not timed. Thinking mode is slow by nature on a CPU
and runs on the first --thinking-rows texts; the ratio thinking / rag+ft compares p50 latencies. Results go to
coder.json and coder.md in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oncocoder.agent.coder import MODES, Coder, CoderConfig
from oncocoder.eval.testset import DEV_SET, load_testset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testset", default=str(DEV_SET))
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--thinking-rows", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import torch

    rows = [{"id": r.id, "text": r.text} for r in load_testset(args.testset).rows]
    coder = Coder(CoderConfig())
    report = {"testset": args.testset, "rows": len(rows), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(),
                          "device": "cuda" if torch.cuda.is_available() else "cpu"},
              "batch_size": coder.batch_size, "modes": {}}
    for mode in args.modes.split(","):
        batch = rows[:args.thinking_rows] if mode == "thinking" else rows
        coder.code_batch(rows[:1], mode=mode)  # warm-up: models, adapters, compiled constraints
        t0 = time.perf_counter()
        preds = coder.code_batch(batch, mode=mode)
        wall = time.perf_counter() - t0
        ms = np.array([p.latency_ms for p in preds if p.error is None])
        report["modes"][mode] = {
            "texts": len(batch), "errors": sum(p.error is not None for p in preds),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "texts_per_second": round(len(batch) / wall, 2), "wall_seconds": round(wall, 1)}
        print(mode, report["modes"][mode], flush=True)
    m = report["modes"]
    if "thinking" in m and "rag+ft" in m:
        report["thinking_over_rag+ft_p50"] = round(m["thinking"]["p50_ms"] / m["rag+ft"]["p50_ms"], 1)
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "coder.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Coder benchmark ({report['date']})", "",
             f"Test set `{Path(args.testset).name}` ({len(rows)} texts), {report['machine']['device']}, "
             f"{report['machine']['cpu_count']} CPU cores, batch size {report['batch_size']}; "
             f"thinking on the first {args.thinking_rows} texts.", "",
             "| mode | texts | p50 ms | p95 ms | texts/s | whole batch s |", "|---|---|---|---|---|---|"]
    for mode, r in m.items():
        lines.append(f"| {mode} | {r['texts']} | {r['p50_ms']} | {r['p95_ms']} | {r['texts_per_second']} | "
                     f"{r['wall_seconds']} |")
    if "thinking_over_rag+ft_p50" in report:
        lines += ["", f"thinking / rag+ft (p50): {report['thinking_over_rag+ft_p50']}x"]
    (out / "coder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
