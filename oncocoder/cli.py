"""The `oncocoder` command line: thin subcommands over the Python API.

A user mistake (a flag, a file, a value) ends with one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from oncocoder import config
from oncocoder.errors import UserError


def _index_config(args):
    from oncocoder.index.embedding import embedding_config
    from oncocoder.index.store import IndexConfig

    emb = embedding_config(args.embedding_model, **({"quantize": args.quantize} if args.quantize else {}))
    return IndexConfig(name=args.index_name, alphabet=args.alphabet, embedding=emb,
                       **({"faiss": args.faiss} if getattr(args, "faiss", None) else {}))


def _add_index_args(p: argparse.ArgumentParser) -> None:
    from oncocoder.index.store import DEFAULT_INDEX_NAME

    p.add_argument("--embedding-model", default=config.DEFAULT_EMBEDDING_MODEL,
                   help="sentence-transformers model id or folder (default: %(default)s, prepared offline)")
    p.add_argument("--quantize", default=None, choices=["auto", "none", "int8"],
                   help="int8 dynamic quantisation of the encoder (CPU only): auto = int8 on a CPU, none on a GPU "
                        "(default: auto; a search uses the setting its index was built with)")
    p.add_argument("--alphabet", default="alphaidse", choices=["alphaidse", "alpha2010"],
                   help="alphabetical index for ICD-10-GM synonyms (default: %(default)s)")
    p.add_argument("--index-name", default=DEFAULT_INDEX_NAME, help="index folder name under the cache")


def _read_jsonl_texts(path: Path) -> list[dict]:
    """Rows with `id` and `text` from a JSONL file; a broken line becomes a row with an error."""
    if not path.exists():
        raise UserError(f"The input file {path} does not exist.")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError
                rows.append({"id": obj.get("id", n), "text": obj.get("text"), "line": n})
            except ValueError:
                rows.append({"id": n, "text": None, "line": n, "error": f"line {n} is not a JSON object"})
    return rows


# ----------------------------------------------------------------------------------------- commands

def cmd_models(args) -> int:
    from oncocoder.models import prepare_all

    for name, path in prepare_all(force=args.force).items():
        print(f"{name}: {path}")
    return 0


def cmd_index_build(args) -> int:
    from oncocoder.index.store import build_index, read_manifest

    cfg = _index_config(args)
    if not args.force and (cfg.path() / "manifest.json").exists():
        from oncocoder.index.store import load_index

        try:
            load_index(cfg)
            print(f"The index at {cfg.path()} is up to date (use --force to rebuild).")
            return 0
        except UserError as exc:
            print(f"Rebuilding: {exc}")
    build_index(cfg)
    m = read_manifest(cfg.path())
    print(json.dumps({s: v["rows"] for s, v in m["systems"].items()}))
    return 0


def cmd_index_info(args) -> int:
    from oncocoder.index.store import read_manifest

    print(json.dumps(read_manifest(_index_config(args).path()), indent=2, ensure_ascii=False))
    return 0


def cmd_search(args) -> int:
    from oncocoder.index.retrieve import RetrievalConfig, Retriever, candidates_json

    if (args.text is None) == (args.input is None):
        raise UserError("Give either a TEXT or --input FILE.jsonl (with --output OUT.jsonl).")
    if args.input and not args.output:
        raise UserError("--input needs --output OUT.jsonl.")
    systems = [args.system] if args.system else None
    retrieval = RetrievalConfig() if args.method is None else RetrievalConfig(method=args.method, system_methods=())
    retriever = Retriever(_index_config(args), retrieval)
    if args.text is not None:
        result = retriever.search(args.text, k=args.k, systems=systems)
        if args.json:
            print(json.dumps({"text": args.text, "candidates": candidates_json(result)}, ensure_ascii=False,
                             indent=2))
            return 0
        for system, cands in result.items():
            print(f"{system}:")
            for i, c in enumerate(cands, 1):
                print(f"  {i:>2}. {c.code:<8} {c.title}   [{c.matched}]  {c.score:.4f}")
        return 0
    from tqdm import tqdm

    rows = _read_jsonl_texts(Path(args.input))
    errors = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for row in tqdm(rows, desc="search", unit="text"):
            rec = {"id": row["id"]}
            try:
                if row.get("error"):
                    raise UserError(row["error"])
                rec["candidates"] = candidates_json(retriever.search(row["text"], k=args.k, systems=systems))
            except UserError as exc:
                rec["candidates"], rec["error"] = None, str(exc)
                errors += 1
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"{len(rows)} rows, {errors} errors -> {args.output}")
    return 0


def _coder(args):
    from oncocoder.agent.coder import Coder, CoderConfig

    adapters = dict(CoderConfig().adapters)
    if args.adapter:
        if args.mode not in ("ft", "rag+ft"):
            raise UserError("--adapter applies to the modes ft and rag+ft.")
        adapters["ft" if args.mode == "ft" else "rag-ft"] = args.adapter
    cfg = CoderConfig(mode=args.mode, base_model=args.base_model, adapters=adapters, device=args.device,
                      batch_size=args.batch_size,
                      thinking_budget=args.thinking_budget)
    return Coder(cfg)


def _print_prediction(p) -> None:
    if p.error:
        print(f"error: {p.error}")
        return
    for system in config.SYSTEMS:
        r = getattr(p, system)
        print(f"{system:<16} " + (f"{r.code:<8} {r.title}  ({r.confidence:.0%})" if r else "-"))
    print(f"{'is_tumor':<16} {'ja' if p.is_tumor else 'nein'}")
    if p.reasoning:
        print(f"reasoning: {p.reasoning}")
    print(f"mode {p.mode}, {p.latency_ms:.0f} ms")


def cmd_code(args) -> int:
    from oncocoder.agent.batch import code_file, read_rows
    from oncocoder.agent.coder import check_mode

    check_mode(args.mode)
    if (args.text is None) == (args.input is None):
        raise UserError("Give either a TEXT or --input FILE (.jsonl or .csv) with --output OUT.jsonl.")
    if args.input and not args.output:
        raise UserError("--input needs --output OUT.jsonl.")
    coder = _coder(args)
    if args.text is not None:
        pred = coder.code(args.text)
        if args.json:
            print(pred.model_dump_json(indent=2))
        else:
            _print_prediction(pred)
        return 0 if pred.error is None else 1
    from tqdm import tqdm

    rows = read_rows(args.input)
    with tqdm(total=len(rows), desc=f"code ({args.mode})", unit="text") as bar:
        summary = code_file(coder, rows, args.output, progress=bar.update)
    print(f"{summary['rows']} rows, {summary['errors']} errors, {summary['texts_per_second']} texts/s "
          f"-> {args.output}")
    return 0


def cmd_finetune(args) -> int:
    from oncocoder.finetune.train import TrainConfig, merge, train

    if args.action == "merge":
        if not args.adapter or not args.out:
            raise UserError("finetune merge needs --adapter ADAPTER_DIR and --out MERGED_DIR.")
        base = args.base_model if args.base_model != config.DEFAULT_BASE_MODEL or not args.adapter else None
        print(f"Merged model written to {merge(args.adapter, args.out, base)}")
        return 0
    cfg = TrainConfig(data=args.data or [], out=args.out or "", base_model=args.base_model, lora_r=args.lora_r,
                      lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                      target_modules=args.target_modules.split(",") if args.target_modules else None,
                      epochs=args.epochs, max_steps=args.max_steps, limit=args.limit, batch_size=args.batch_size,
                      grad_accum=args.grad_accum, lr=args.lr, warmup_steps=args.warmup_steps, schedule=args.schedule,
                      max_length=args.max_length, dev_size=args.dev_size, eval_every=args.eval_every,
                      checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                      load_4bit=args.load_4bit, resume=args.resume)
    manifest = train(cfg)
    print(f"Adapter written to {cfg.out}: {manifest['steps']} steps, best dev exact "
          f"{(manifest['best'] or {}).get('exact')} ({manifest['train_seconds']} s training)")
    return 0


def cmd_eval(args) -> int:
    from oncocoder.eval.run import from_args, run_eval

    run_eval(from_args(args))
    return 0


def cmd_demo(args) -> int:
    from oncocoder.ui.app import launch

    args.mode = config.DEFAULT_MODE
    launch(host=args.host, port=args.port, coder=_coder(args))
    return 0


def cmd_data(args) -> int:
    from oncocoder.finetune.data import build_dataset, from_args

    stats = build_dataset(from_args(args))
    print(json.dumps({k: v for k, v in stats.items() if not isinstance(v, dict)}, ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oncocoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="prepare the default offline models in the cache")
    p.add_argument("action", choices=["prepare"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("index", help="build or inspect the retrieval index")
    isub = p.add_subparsers(dest="action", required=True)
    b = isub.add_parser("build", help="embed every catalogue term and persist the index")
    _add_index_args(b)
    b.add_argument("--faiss", default=None, choices=["flat", "hnsw"], help="vector index (default: hnsw)")
    b.add_argument("--force", action="store_true", help="rebuild even when the index is up to date")
    b.set_defaults(func=cmd_index_build)
    i = isub.add_parser("info", help="print the index manifest")
    _add_index_args(i)
    i.set_defaults(func=cmd_index_info)

    p = sub.add_parser("search", help="retrieve candidate codes for a text or a JSONL file of texts")
    p.add_argument("text", nargs="?", help="diagnosis text")
    p.add_argument("-k", type=int, default=10, help="candidates per system (default: %(default)s)")
    p.add_argument("--system", choices=list(config.SYSTEMS))
    p.add_argument("--json", action="store_true", help="print the candidates as JSON")
    p.add_argument("--input", help="JSONL file with `id` and `text` per line")
    p.add_argument("--output", help="JSONL output, one line per input row")
    p.add_argument("--method", choices=["fused", "dense", "lexical"],
                   help="one method for every system (default: fused, morphology lexical; see README)")
    _add_index_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("code", help="code a text or a file of texts (JSONL with id/text, or CSV with a text column)")
    p.add_argument("text", nargs="?", help="diagnosis text")
    p.add_argument("--mode", default=config.DEFAULT_MODE, help="retrieval, base, ft, rag, rag+ft or thinking (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.add_argument("--input", help="JSONL (id, text) or CSV (text column) file")
    p.add_argument("--output", help="JSONL output: one prediction per input row, in input order")
    _add_model_args(p)
    p.set_defaults(func=cmd_code)

    p = sub.add_parser("eval", help="compare the modes on test sets: metrics.json, report.md, CSV and plots")
    from oncocoder.eval.run import add_arguments as add_eval_arguments

    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="the Gradio web demo")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    _add_model_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("data", help="build instruction data from the catalogues")
    dsub = p.add_subparsers(dest="action", required=True)
    d = dsub.add_parser("build", help="plain and RAG instruction data, a held-out split and a dataset card")
    from oncocoder.finetune.data import add_arguments

    add_arguments(d)
    d.set_defaults(func=cmd_data)

    p = sub.add_parser("finetune", help="train a LoRA adapter (default) or merge one into its base model")
    p.add_argument("action", nargs="?", default="train", choices=["train", "merge"])
    p.add_argument("--data", action="append", help="chat-format JSONL (repeat for a mix of plain and RAG data)")
    p.add_argument("--out", help="adapter folder (train) or merged model folder (merge)")
    p.add_argument("--adapter", help="adapter folder to merge")
    p.add_argument("--base-model", default=config.DEFAULT_BASE_MODEL)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--target-modules", help="comma-separated module names (default: chosen per architecture)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train on a deterministic sample of this many examples")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--schedule", default="cosine", choices=["cosine", "linear", "constant"])
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--dev-size", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps as well (0: per epoch)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--device", default=None)
    p.add_argument("--load-4bit", action="store_true", help="QLoRA: 4-bit base weights (GPU, bitsandbytes)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    p.set_defaults(func=cmd_finetune)
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", default=config.DEFAULT_BASE_MODEL,
                   help="Hugging Face causal LM id or folder (default: %(default)s, prepared offline)")
    p.add_argument("--adapter", help="LoRA adapter folder for the ft or rag+ft mode (default: the shipped one)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (default: 1 on CPU, 16 on GPU)")
    p.add_argument("--thinking-budget", type=int, default=256, help="reasoning tokens in thinking mode")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"oncocoder: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("oncocoder: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
