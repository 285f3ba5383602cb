"""Retrieval benchmark: recall@k per method, query latency, index build time.

    python benchmarks/retrieval.py [--testset FILE] [--build] [--out benchmarks/results]

Recall is measured on the tumor rows of the test set (default: the dev set). Latency is the wall time of one
`Retriever.search` over all three systems (embedding included), after a warm-up, one text at a time.
`--build` times a fresh build of the index into a separate cache folder (the build figure otherwise comes from the
manifest of the index in use). Results go to retrieval.json and retrieval.md in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oncocoder import config
from oncocoder.eval.metrics import recall_at_k
from oncocoder.eval.testset import DEV_SET, load_testset
from oncocoder.index.embedding import Embedder
from oncocoder.index.retrieve import METHODS, RetrievalConfig, Retriever
from oncocoder.index.store import IndexConfig, build_index, read_manifest

KS = (1, 5, 10)


def recall_table(retriever: Retriever, rows, k_max: int = 10) -> dict:
    out: dict = {}
    results = [retriever.search(r.text, k=k_max) for r in rows]
    for system in config.SYSTEMS:
        for level in ("exact", "category"):
            for k in KS:
                vals = [recall_at_k([c.code for c in res[system]], r.gold[system], k, system,
                                    "exact" if level == "exact" else "partial")
                        for r, res in zip(rows, results)]
                vals = [v for v in vals if v == v]
                out[f"{system}.{level}.recall@{k}"] = round(float(np.mean(vals)), 4) if vals else None
        out[f"{system}.n"] = sum(r.gold[system] is not None for r in rows)
    misses = [{"id": r.id, "text": r.text, "gold": r.gold["icd10gm"],
               "top3": [c.code for c in res["icd10gm"][:3]]}
              for r, res in zip(rows, results)
              if r.gold["icd10gm"] and r.gold["icd10gm"] not in [c.code for c in res["icd10gm"][:10]]]
    return out, misses


def latency(retriever: Retriever, texts: list[str], repeats: int = 3) -> dict:
    for t in texts[:5]:
        retriever.search(t)
    ms = []
    for _ in range(repeats):
        for t in texts:
            t0 = time.perf_counter()
            retriever.search(t)
            ms.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
            "queries": len(ms)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--testset", default=str(DEV_SET))
    ap.add_argument("--build", action="store_true", help="time a fresh index build")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--index-name", default=None, help="use this index folder (its manifest gives the settings)")
    args = ap.parse_args()

    index_cfg = IndexConfig()
    if args.index_name:
        m = read_manifest(replace(index_cfg, name=args.index_name).path())
        from oncocoder.index.embedding import embedding_config

        index_cfg = replace(index_cfg, name=args.index_name, faiss=m["faiss"],
                            embedding=embedding_config(m["embedding"]["model"], quantize=m["embedding"]["quantize"]))
    if args.build:
        build_cfg = replace(index_cfg, name="bench-build")
        t0 = time.time()
        build_index(build_cfg, progress=False)
        build_seconds = round(time.time() - t0, 1)
        index_cfg = build_cfg
    manifest = read_manifest(index_cfg.path())
    build_seconds = build_seconds if args.build else manifest["build_seconds"]

    ts = load_testset(args.testset)
    tumor_rows = [r for r in ts.rows if r.is_tumor]
    embedder = Embedder(index_cfg.embedding)
    report = {"testset": str(args.testset), "testset_sha256": ts.sha256, "tumor_rows": len(tumor_rows),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
              or platform.machine(), "cpu_count": __import__("os").cpu_count(),
              "index": {"embedding": manifest["embedding"], "faiss": manifest["faiss"],
                        "rows": {s: v["rows"] for s, v in manifest["systems"].items()},
                        "build_seconds": build_seconds, "build_timed_here": args.build},
              "methods": {}, "latency": {}}
    # "default" is RetrievalConfig() as the coder uses it; the others apply one method to every system
    settings = {"default": RetrievalConfig(), **{m: RetrievalConfig(method=m, system_methods=()) for m in METHODS}}
    for method, retrieval_cfg in settings.items():
        retriever = Retriever(index_cfg, retrieval_cfg, embedder=embedder)
        table, misses = recall_table(retriever, tumor_rows)
        report["methods"][method] = table
        report["latency"][method] = latency(retriever, [r.text for r in ts.rows])
        if method == "default":
            report["misses_default_icd10gm@10"] = misses
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    lines = [f"# Retrieval benchmark ({report['date']})", "",
             f"Test set `{Path(args.testset).name}` ({len(tumor_rows)} tumor rows), index: "
             f"{manifest['embedding']['model']} (quantize={manifest['embedding']['quantize']}), "
             f"faiss={manifest['faiss']}, build {build_seconds} s, {report['cpu_count']} CPU cores.", "",
             "| method | ICD-10 exact R@1 | R@5 | R@10 | ICD-10 category R@10 | topography R@10 | morphology R@10 "
             "| p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in settings:
        t, lat = report["methods"][m], report["latency"][m]
        lines.append(f"| {m} | {t['icd10gm.exact.recall@1']} | {t['icd10gm.exact.recall@5']} | "
                     f"{t['icd10gm.exact.recall@10']} | {t['icd10gm.category.recall@10']} | "
                     f"{t['icdo_topography.exact.recall@10']} | {t['icdo_morphology.exact.recall@10']} | "
                     f"{lat['p50_ms']} | {lat['p95_ms']} |")
    (out / "retrieval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
