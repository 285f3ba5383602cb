"""LoRA fine-tuning with peft: the same command on a 2-core CPU (Gemma 3 270M) and on a GPU (7B-70B models).

    oncocoder finetune --data DIR/plain.jsonl [--data DIR/rag.jsonl] --out ADAPTER_DIR [--epochs 5] ...

The whole loop is in `train()`: a chat-format JSONL in, a peft LoRA adapter out. The loss covers the answer tokens
only, and only their logits are computed (the output layer of a 262k-token vocabulary is the largest cost of a
small model). After every epoch (and every `eval_every` steps) the adapter is scored on a dev split with the
project's own metric: exact accuracy of constrained decoding, as `oncocoder code` decodes. The best adapter is
kept in OUT/ (adapter files + manifest.json); OUT/checkpoint/ holds the last checkpoint (adapter, optimizer,
scheduler, data order, random states), from which `--resume` continues after an interruption.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.files import sha256_file

# LoRA target modules per architecture (attention projections, as in the paper); peft's own table otherwise.
TARGET_MODULES = {
    "gemma3_text": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj"],
}
MIN_FREE_BYTES = 200 * 1024 * 1024


@dataclass
class TrainConfig:
    data: list[str] = field(default_factory=list)  # chat-format JSONL files (plain, rag, or both)
    out: str = ""
    base_model: str = config.DEFAULT_BASE_MODEL
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    epochs: int = 5
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when reached first)
    limit: int | None = None  # use only this many training examples (a deterministic sample)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    warmup_steps: int = 20
    schedule: str = "cosine"  # cosine | linear | constant
    weight_decay: float = 0.0
    max_length: int = 512
    dev_size: int = 200
    eval_every: int = 0  # also evaluate every N steps (0: after each epoch only)
    checkpoint_every: int = 50
    seed: int = 13
    device: str | None = None
    bf16: bool | None = None  # None: on GPU yes, on CPU no
    gradient_checkpointing: bool | None = None  # None: on GPU yes
    load_4bit: bool = False  # QLoRA, needs bitsandbytes and a GPU
    resume: bool = False
    threads: int | None = None


# ------------------------------------------------------------------------------------------------- data

def read_examples(paths: list[str]) -> list[dict]:
    """Chat-format examples: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], ...}."""
    if not paths:
        raise UserError("Give at least one training file with --data (plain.jsonl or rag.jsonl from `oncocoder data build`).")
    out = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"The training file {path} does not exist.")
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ex = json.loads(line)
                    msgs = ex["messages"]
                    ok = (isinstance(msgs, list) and len(msgs) >= 2 and msgs[-1]["role"] == "assistant"
                          and msgs[-2]["role"] == "user" and isinstance(msgs[-1]["content"], str))
                except (json.JSONDecodeError, KeyError, TypeError):
                    ok = False
                if not ok:
                    raise UserError(f"Line {n} of {path} is not a chat-format example ({{\"messages\": [user, "
                                    "assistant]}}); use the files written by `oncocoder data build`.")
                out.append(ex)
    if not out:
        raise UserError(f"The training files {', '.join(paths)} hold no examples.")
    return out


def split_dev(examples: list[dict], dev_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A fixed dev split (the examples whose answers are decodable: codes, letters, ja/nein)."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    scorable = [i for i in order if examples[i].get("task") != "title"]
    dev_idx = set(scorable[:min(dev_size, len(examples) // 5)])
    return [examples[i] for i in order if i not in dev_idx], [examples[i] for i in sorted(dev_idx)]


def encode(llm, ex: dict, max_length: int) -> tuple[list[int], int] | None:
    """Token ids of prompt + answer, and where the answer starts; None when longer than max_length."""
    user = ex["messages"][-2]["content"]
    prompt = llm.prompt_ids(user)
    answer = llm.answer_ids(ex["messages"][-1]["content"], user)
    ids = prompt + answer
    return (ids, len(prompt)) if len(ids) <= max_length else None


# ------------------------------------------------------------------------------------------------- model

def _load(cfg: TrainConfig, device: str, bf16: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from oncocoder.agent.llm import LLM, LLMConfig

    llm = LLM(LLMConfig(base_model=cfg.base_model, device=device, dtype="bfloat16" if bf16 else "float32",
                        threads=cfg.threads, load_4bit=cfg.load_4bit))
    if cfg.load_4bit:
        llm.model = prepare_model_for_kbit_training(llm.model)
    model_type = llm.model.config.model_type
    targets = cfg.target_modules or TARGET_MODULES.get(model_type)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    try:
        peft_model = get_peft_model(llm.model, lora)
    except ValueError as exc:
        raise UserError(f"LoRA could not be applied to {cfg.base_model} ({exc}); pass --target-modules.") from exc
    # the adapter names the base model by its id, not by the local folder it was loaded from
    peft_model.peft_config["default"].base_model_name_or_path = cfg.base_model
    if cfg.gradient_checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    llm.model = peft_model
    llm.adapters["train"] = cfg.out
    return llm, peft_model


def answer_loss(peft_model, input_ids, attention_mask, answer_positions, answer_targets):
    """Cross-entropy over the answer tokens only; logits are computed at those positions alone."""
    import torch

    causal = peft_model.get_base_model()
    hidden = causal.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    h = hidden[answer_positions[0], answer_positions[1]]
    logits = causal.get_output_embeddings()(h).float()
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits, answer_targets)


def collate(batch: list[tuple[list[int], int]], pad_id: int, device: str):
    """Right-padded ids, mask, and the (row, position) pairs that predict each answer token."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, (seq, start) in enumerate(batch):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        for pos in range(start, len(seq)):
            rows.append(r)
            cols.append(pos - 1)
            targets.append(seq[pos])
    return (ids.to(device), mask.to(device), (torch.tensor(rows, device=device), torch.tensor(cols, device=device)),
            torch.tensor(targets, device=device))


# ------------------------------------------------------------------------------------------------- evaluation

def dev_accuracy(llm, dev: list[dict], catalogue) -> dict:
    """Exact accuracy of constrained decoding on the dev split, per task and overall."""
    from oncocoder.agent import prompts

    by_task: dict[str, list[float]] = {}
    llm.model.eval()
    for ex in dev:
        task = ex.get("task", "icd10gm")
        user, answer = ex["messages"][-2]["content"], ex["messages"][-1]["content"]
        if ex.get("format") == "rag" and task != "is_tumor":
            n_opts = sum(1 for line in user.splitlines() if len(line) > 2 and line[1] == ")" and line[0].isupper())
            allowed = prompts.LABELS[:n_opts]
        elif task == "is_tumor":
            allowed = (prompts.YES, prompts.NO)
        elif task in config.SYSTEMS:
            allowed = tuple(catalogue.list_codes(task)) + ((prompts.NO_MORPHOLOGY,) if task == "icdo_morphology" else ())
        else:
            continue
        choice = llm.choose([llm.prompt_ids(user)], [llm.constraint(allowed)])[0]
        by_task.setdefault(task, []).append(float(choice.text == answer))
    llm.model.train()
    total = [v for vs in by_task.values() for v in vs]
    return {"exact": round(sum(total) / len(total), 4) if total else None, "n": len(total),
            **{f"exact.{t}": round(sum(v) / len(v), 4) for t, v in sorted(by_task.items())}}


# ------------------------------------------------------------------------------------------------- training

def _hardware(device: str) -> dict:
    import torch

    info = {"device": device, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _check_disk(path: Path) -> None:
    free = shutil.disk_usage(path if path.exists() else path.parent).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"Only {free // 2**20} MiB free at {path}; a checkpoint needs at least "
                        f"{MIN_FREE_BYTES // 2**20} MiB. Free some space or pass another --out.")


def _lr_lambda(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, progress)
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1.0 - progress
    return f


def _save_adapter(peft_model, target: Path, manifest: dict) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    for name in os.listdir(tmp):
        os.replace(tmp / name, target / name)
    tmp.rmdir()


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train a LoRA adapter; returns the manifest written next to it."""
    import torch
    from tqdm import tqdm

    from oncocoder.index.catalogue import load_catalogue

    if not cfg.out:
        raise UserError("Give the adapter folder with --out.")
    out = Path(cfg.out)
    ckpt = out / "checkpoint"
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise UserError(f"{out} is not empty; pass --resume to continue its checkpoint or choose another --out.")
    if cfg.resume and not (ckpt / "state.pt").exists():
        raise UserError(f"There is no checkpoint in {ckpt} to resume from.")
    out.mkdir(parents=True, exist_ok=True)
    _check_disk(out)

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    bf16 = on_gpu if cfg.bf16 is None else cfg.bf16
    if cfg.gradient_checkpointing is None:
        cfg.gradient_checkpointing = on_gpu
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    examples = read_examples(cfg.data)
    if cfg.limit:
        examples = random.Random(cfg.seed).sample(examples, min(cfg.limit, len(examples)))
    train_ex, dev = split_dev(examples, cfg.dev_size, cfg.seed)
    llm, peft_model = _load(cfg, device, bf16)
    encoded = [e for e in (encode(llm, ex, cfg.max_length) for ex in train_ex) if e is not None]
    dropped = len(train_ex) - len(encoded)
    if not encoded:
        raise UserError(f"No training example fits --max-length {cfg.max_length}.")
    steps_per_epoch = math.ceil(len(encoded) / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    catalogue = load_catalogue()

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total_steps))
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "evals": [], "seconds": 0.0,
             "eval_seconds": 0.0, "tokens": 0}
    if cfg.resume:
        saved = torch.load(ckpt / "state.pt", weights_only=False)
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(peft_model, load_file(str(ckpt / "adapter_model.safetensors")))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = saved["state"]
        random.setstate(saved["py_rng"])
        torch.set_rng_state(saved["torch_rng"])
        if progress:
            print(f"Resuming from step {state['step']} (epoch {state['epoch'] + 1})", flush=True)

    manifest = {
        "kind": "lora-adapter", "base_model": cfg.base_model,
        "data": [{"path": str(p), "sha256": sha256_file(p)} for p in cfg.data],
        "examples": {"train": len(encoded), "dev": len(dev), "dropped_too_long": dropped},
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k not in ("data", "out", "resume")},
        "target_modules": sorted(peft_model.peft_config["default"].target_modules),
        "trainable_parameters": sum(p.numel() for p in params),
        "hardware": _hardware(device),
    }

    def evaluate(tag: str) -> None:
        t0 = time.time()
        metrics = dev_accuracy(llm, dev, catalogue)
        state["eval_seconds"] += time.time() - t0
        metrics.update(step=state["step"], epoch=state["epoch"], tag=tag)
        state["evals"].append(metrics)
        better = state["best"] is None or (metrics["exact"] or 0) > (state["best"]["exact"] or 0)
        if better:
            state["best"] = metrics
            _save_adapter(peft_model, out, finish_manifest())
        if progress:
            print(f"dev exact {metrics['exact']} at step {state['step']}" + (" (best so far)" if better else ""),
                  flush=True)

    def finish_manifest() -> dict:
        return {**manifest, "steps": state["step"], "epochs_done": state["epoch"], "dev_evaluations": state["evals"],
                "best": state["best"], "train_seconds": round(state["seconds"], 1),
                "eval_seconds": round(state["eval_seconds"], 1),
                "tokens_per_second": round(state["tokens"] / state["seconds"], 1) if state["seconds"] else None,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def checkpoint() -> None:
        _check_disk(out)
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.save_pretrained(tmp)
        for sub in tmp.iterdir():  # peft writes adapter files into the folder (or a subfolder per adapter name)
            if sub.is_dir():
                for f in sub.iterdir():
                    os.replace(f, tmp / f.name)
                sub.rmdir()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "state": state,
                    "py_rng": random.getstate(), "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
        shutil.rmtree(ckpt, ignore_errors=True)
        os.replace(tmp, ckpt)

    step_delay = float(os.environ.get("ONCOCODER_TEST_STEP_DELAY", "0"))
    peft_model.train()
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if (on_gpu and bf16) else None
    bar = tqdm(total=total_steps, initial=state["step"], desc="finetune", unit="step", disable=not progress)
    t_last = time.time()
    while state["step"] < total_steps and state["epoch"] < cfg.epochs:
        order = list(range(len(encoded)))
        random.Random(cfg.seed + state["epoch"]).shuffle(order)
        # group by length within windows of 50 batches: less padding, still shuffled
        window = cfg.batch_size * 50
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w:w + window], key=lambda i: len(encoded[i][0]))]
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        random.Random(cfg.seed + 1000 + state["epoch"]).shuffle(batches)
        while state["batch_in_epoch"] < len(batches) and state["step"] < total_steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                if state["batch_in_epoch"] >= len(batches):
                    break
                batch = [encoded[i] for i in batches[state["batch_in_epoch"]]]
                state["batch_in_epoch"] += 1
                ids, mask, positions, targets = collate(batch, llm.tokenizer.pad_token_id, device)
                if autocast:
                    with autocast:
                        loss = answer_loss(peft_model, ids, mask, positions, targets)
                else:
                    loss = answer_loss(peft_model, ids, mask, positions, targets)
                (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
                state["tokens"] += int(mask.sum())
            if step_delay:  # lets tests interrupt a tiny run between checkpoints
                time.sleep(step_delay)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            now = time.time()
            state["seconds"] += now - t_last
            t_last = now
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{state['tokens'] / max(state['seconds'], 1e-9):.0f}",
                            epoch=state["epoch"] + 1)
            if cfg.eval_every and state["step"] % cfg.eval_every == 0:
                evaluate("step")
                t_last = time.time()
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                checkpoint()
                t_last = time.time()
        if state["batch_in_epoch"] >= len(batches):
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            evaluate("epoch")
            checkpoint()
            t_last = time.time()
        else:
            break
    bar.close()
    if not state["evals"] or state["evals"][-1]["step"] != state["step"]:
        evaluate("final")
        checkpoint()
    final = finish_manifest()
    (out / "manifest.json").write_text(json.dumps(final, indent=2, ensure_ascii=False) + "\n")
    return final


# ------------------------------------------------------------------------------------------------- merge

def merge(adapter: str, out: str, base_model: str | None = None) -> Path:
    """Write base model + adapter as one plain transformers model (for serving without peft)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oncocoder.agent.llm import adapter_base_model
    from oncocoder.models import resolve_model

    adapter_dir = Path(adapter)
    if not (adapter_dir / "adapter_config.json").exists():
        raise UserError(f"{adapter_dir} is not an adapter folder (no adapter_config.json).")
    trained_on = adapter_base_model(adapter_dir)
    base = base_model or trained_on
    if not base:
        raise UserError(f"The adapter {adapter_dir} does not name its base model; pass --base-model.")
    if trained_on and base != trained_on:
        raise UserError(f"The adapter {adapter_dir} was trained on {trained_on}, not on {base}.")
    path = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    AutoTokenizer.from_pretrained(path).save_pretrained(target)
    (target / "manifest.json").write_text(json.dumps({
        "kind": "merged-model", "base_model": base, "adapter": str(adapter_dir),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    return target
