"""GPU check of the LoRA training path on a 7B architecture: tokens per second, peak memory, a loadable adapter.

    python benchmarks/gpu_lora.py --tokenizer DIR [--steps 20] [--batch-size 4] [--out benchmarks/results]
    python benchmarks/gpu_lora.py --tokenizer DIR --tiny          # the same code path on a CPU, in seconds

No model weights can reach the GPU machine, so the model is Qwen2.5-7B's published architecture (hidden 3584,
28 layers, 28 query / 4 key-value heads, MLP 18944, vocabulary 152064) with random weights: speed and memory do
not depend on the weight values, accuracy does, and none is measured here. The batches are real RAG prompts of
this project (agent/prompts.py, ICD-10-GM candidates from the shipped catalogue) tokenised with the carried
tokenizer (ids folded into the vocabulary). Training uses the project's own pieces: LoRA r=8, alpha=16 on
q/k/v/o (finetune/train.py TARGET_MODULES), bf16 weights, gradient checkpointing, the answer-only loss
(finetune/train.py answer_loss). Results go to gpu_lora.json in --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=152064, max_position_embeddings=4096, tie_word_embeddings=False)


def rag_batches(tokenizer, n: int, batch_size: int, vocab: int, seed: int = 0) -> list[list[tuple[list[int], int]]]:
    """Real RAG prompts (10 ICD-10-GM options) with an option letter as the answer, as token ids."""
    from oncocoder.agent import prompts
    from oncocoder.index.catalogue import load_catalogue

    cat = load_catalogue()
    rng = random.Random(seed)
    entries = [e for e in cat.entries_of("icd10gm") if e.chapter == "02" and cat.is_valid(e.code, "icd10gm")]
    out = []
    for _ in range(n):
        batch = []
        for _ in range(batch_size):
            e = rng.choice(entries)
            opts = [prompts.Option(x.code, cat.title(x.code, "icd10gm")) for x in rng.sample(entries, 9)]
            opts.insert(rng.randrange(10), prompts.Option(e.code, cat.title(e.code, "icd10gm")))
            user = prompts.rag_question("icd10gm", e.text, opts) + "\nAntwort:\n"
            label = prompts.LABELS[[o.code for o in opts].index(e.code)]
            ids = [i % vocab for i in tokenizer(user)["input_ids"]]
            batch.append((ids + [tokenizer(label, add_special_tokens=False)["input_ids"][0] % vocab], len(ids)))
        out.append(batch)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="a tokenizer folder carried to the machine")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on the CPU: checks the code path only")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from oncocoder.finetune.train import TARGET_MODULES, answer_loss, collate

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No GPU here; run with --tiny to check the code path on a CPU.")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = Qwen2Config(**(TINY if args.tiny else QWEN25_7B))
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    build_seconds = time.time() - t0
    model.config.use_cache = False
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGET_MODULES["qwen2"],
                      task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-4)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    batches = rag_batches(tokenizer, args.warmup + args.steps, args.batch_size, cfg.vocab_size)
    pad = 0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds, losses = 0, 0.0, []
    peft_model.train()
    for step, batch in enumerate(batches):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.time()
        ids, mask, positions, targets = collate(batch, pad, device)
        loss = answer_loss(peft_model, ids, mask, positions, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            seconds += time.time() - t
            tokens += int(mask.sum())
            losses.append(round(loss.item(), 4))
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        # Load the saved adapter back under a second name and check every LoRA weight came back unchanged.
        peft_model.load_adapter(tmp, adapter_name="reloaded")
        state = peft_model.state_dict()
        keys = [k for k in state if "lora_" in k and ".default." in k]
        adapter_loads = bool(keys) and all(torch.equal(state[k], state[k.replace(".default.", ".reloaded.")])
                                           for k in keys)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/gpu_lora.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k}" for k, v in vars(args).items()
            if v not in (False, None) and k != "out"),
        "architecture": "tiny Qwen2 (code path check)" if args.tiny else "Qwen2.5-7B (random weights)",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype), "parameters": total, "trainable_parameters": trainable,
        "batch_size": args.batch_size, "steps_timed": args.steps, "mean_tokens_per_batch": round(tokens / args.steps),
        "tokens_per_second": round(tokens / seconds, 1), "seconds_per_step": round(seconds / args.steps, 3),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "model_build_seconds": round(build_seconds, 1), "losses": losses,
        "adapter_bytes": size, "adapter_reloads": adapter_loads,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "gpu_lora_tiny.json" if args.tiny else "gpu_lora.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
