"""The language model: loading (any Hugging Face causal LM, LoRA adapters by name), prompt rendering, and
constrained decoding with outlines.

Constrained decoding: outlines (outlines_core) compiles the set of allowed answers (the codes of a system, the
option letters of a candidate list, ja/nein) into an `Index` over the model's vocabulary, once per answer set;
large sets are cached on disk. At each step the outlines `Guide` gives the allowed token ids and the loop scores
only those tokens against the output embedding (the 262k-token output layer of Gemma is never computed in
full), picks the most probable one and advances the guide. The answer is therefore always one of the allowed
strings, and its confidence is the model's probability of that answer renormalised over what was allowed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import time
from dataclasses import dataclass
from pathlib import Path

from oncocoder import config
from oncocoder.errors import UserError

ANSWER_CUE = "Antwort:"


@dataclass(frozen=True)
class LLMConfig:
    base_model: str = config.DEFAULT_BASE_MODEL
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    threads: int | None = None
    load_4bit: bool = False  # QLoRA-style 4-bit base weights (bitsandbytes, GPU only)


@dataclass(frozen=True)
class Choice:
    text: str
    confidence: float


class Constraint:
    """A compiled set of allowed answer strings (an outlines Index)."""

    def __init__(self, options: tuple[str, ...], index):
        self.options = options
        self.index = index


def adapter_base_model(adapter_dir: Path) -> str | None:
    """The base model an adapter was trained on, from its manifest (or peft's adapter_config.json)."""
    manifest = adapter_dir / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text()).get("base_model")
    cfg = adapter_dir / "adapter_config.json"
    if cfg.exists():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


class LLM:
    """One base model with any number of named LoRA adapters; `use(name)` selects one (None: the base model)."""

    def __init__(self, cfg: LLMConfig = LLMConfig()):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from oncocoder.models import resolve_model

        self.cfg = cfg
        threads = cfg.threads or int(os.environ.get("ONCOCODER_THREADS", "0")) or None
        if threads:
            torch.set_num_threads(threads)
        self.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"auto": torch.bfloat16 if self.device.startswith("cuda") else torch.float32,
                 "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
        if dtype is None:
            raise UserError(f"Unknown --dtype {cfg.dtype!r}; use auto, float32, bfloat16 or float16.")
        self.path = resolve_model(cfg.base_model)
        kwargs = {"dtype": dtype}
        if cfg.load_4bit:
            if not self.device.startswith("cuda"):
                raise UserError("4-bit loading (--load-4bit) needs a GPU.")
            try:
                import bitsandbytes  # noqa: F401
                from transformers import BitsAndBytesConfig
            except ImportError as exc:
                raise UserError("4-bit loading (--load-4bit) needs the bitsandbytes package.") from exc
            kwargs.update(quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4"),
                device_map={"": self.device})
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
            if not cfg.load_4bit:
                self.model = self.model.to(self.device)
        except (OSError, ValueError) as exc:
            raise UserError(f"The base model {cfg.base_model} could not be loaded ({str(exc).splitlines()[0]}); pass "
                            "a Hugging Face causal LM id or a folder with --base-model.") from exc
        self.model.eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.adapters: dict[str, str] = {}
        self.active: str | None = None
        self._constraints: dict[tuple[str, ...], Constraint] = {}
        self._vocabulary = None

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under `name`; refuse one trained on another base model."""
        from peft import PeftModel

        path = Path(path)
        if not (path / "adapter_config.json").exists():
            raise UserError(f"The adapter folder {path} has no adapter_config.json; pass a folder written by "
                            "`oncocoder finetune`.")
        base = adapter_base_model(path)
        if base and base != self.cfg.base_model:
            raise UserError(f"The adapter {path} was trained on {base}, not on {self.cfg.base_model}; pass "
                            f"--base-model {base} or another adapter.")
        try:
            if not self.adapters:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name)
            else:
                self.model.load_adapter(str(path), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"The adapter {path} does not fit the base model {self.cfg.base_model} "
                            f"({str(exc).splitlines()[0][:200]}).") from exc
        self.model.eval()
        self.adapters[name] = str(path)

    @contextlib.contextmanager
    def use(self, name: str | None):
        """Run with the named adapter active, or with the plain base model for None."""
        if name is not None and name not in self.adapters:
            raise UserError(f"No adapter named {name!r} is loaded.")
        if not self.adapters:
            yield
            return
        if name is None:
            with self.model.disable_adapter():
                self.active = None
                yield
        else:
            self.model.set_adapter(name)
            self.active = name
            yield

    # ------------------------------------------------------------------ prompts
    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def prompt_text(self, user: str, cue: str = ANSWER_CUE) -> str:
        """The prompt as text: the chat template where the model has one, else `user` + newline + cue."""
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                      add_generation_prompt=True)
        return f"{user}\n{cue}\n"

    def prompt_ids(self, user: str, cue: str = ANSWER_CUE) -> list[int]:
        text = self.prompt_text(user, cue)
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def answer_ids(self, answer: str, user: str) -> list[int]:
        """The tokens the model is trained to produce after the prompt of `user`: the answer as the tokenizer splits
        it in context (so no word-start marker sneaks in that constrained decoding would not allow), then the end
        of the turn."""
        prompt = self.prompt_ids(user)
        full = self.tokenizer(self.prompt_text(user) + answer, add_special_tokens=not self.chat)["input_ids"]
        if full[:len(prompt)] == prompt and len(full) > len(prompt):
            ids = full[len(prompt):]
        else:
            ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + [self.end_token_id]

    @property
    def end_token_id(self) -> int:
        if self.chat:
            for tok in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>"):
                tid = self.tokenizer.convert_tokens_to_ids(tok)
                if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                    return tid
        return self.tokenizer.eos_token_id

    # ------------------------------------------------------------------ constraints
    def _outlines_vocabulary(self):
        if self._vocabulary is None:
            from outlines.backends.outlines_core import OutlinesCoreBackend
            from outlines.models.transformers import TransformerTokenizer

            tok = TransformerTokenizer(self.tokenizer)
            self._vocabulary = OutlinesCoreBackend.create_outlines_core_vocabulary(
                self.tokenizer.get_vocab(), self.tokenizer.eos_token_id, self.tokenizer.eos_token,
                tok.convert_token_to_string)
        return self._vocabulary

    def _vocab_fingerprint(self) -> str:
        vocab = self.tokenizer.get_vocab()
        h = hashlib.sha256()
        for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            h.update(f"{i}\t{tok}\n".encode())
        return h.hexdigest()[:16]

    def constraint(self, options: tuple[str, ...] | list[str]) -> Constraint:
        """The compiled constraint for a set of answer strings: built once, reused; sets of 100 or more options
        are also cached on disk (compiling all ICD-10-GM codes takes about 15 s)."""
        from outlines_core import Index

        options = tuple(options)
        if not options:
            raise ValueError("a constraint needs at least one option")
        if options in self._constraints:
            return self._constraints[options]
        regex = "(" + "|".join(re.escape(o) for o in sorted(set(options), key=lambda o: (-len(o), o))) + ")"
        cache_file = None
        if len(options) >= 100:
            key = hashlib.sha256((self._vocab_fingerprint() + regex).encode()).hexdigest()[:24]
            cache_file = config.cache_dir() / "constraints" / f"{key}.pkl"
            if cache_file.exists():
                with open(cache_file, "rb") as f:
                    index = pickle.load(f)
                self._constraints[options] = Constraint(options, index)
                return self._constraints[options]
        index = Index(regex, self._outlines_vocabulary())
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            with open(tmp, "wb") as f:
                pickle.dump(index, f)
            tmp.rename(cache_file)
        self._constraints[options] = Constraint(options, index)
        return self._constraints[options]

    # ------------------------------------------------------------------ decoding
    def _parts(self):
        causal = self.model.get_base_model() if self.adapters else self.model
        return causal.get_decoder(), causal.get_output_embeddings().weight, \
            getattr(causal.config, "final_logit_softcapping", None)

    def choose(self, prompts: list[list[int]], constraints: list[Constraint]) -> list[Choice]:
        """Greedy constrained decoding of a batch: one allowed answer per prompt, with its probability."""
        import torch
        from outlines_core import Guide

        if not prompts:
            return []
        backbone, out_w, softcap = self._parts()
        pad = self.tokenizer.pad_token_id
        n = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        guides = [Guide(c.index) for c in constraints]
        chosen: list[list[int]] = [[] for _ in range(n)]
        logprob = [0.0] * n
        done = [False] * n
        eos = self.tokenizer.eos_token_id
        past = None
        step_ids, step_pos = ids, positions
        with torch.inference_mode():
            for _ in range(64):
                out = backbone(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, cache=past,
                               use_cache=True)
                past = out.cache
                hidden = out.last_hidden_state[:, -1, :]
                next_tokens = []
                for i in range(n):
                    if done[i]:
                        next_tokens.append(pad)
                        continue
                    allowed = [t for t in guides[i].get_tokens() if t != eos]
                    if not allowed:  # the answer is complete
                        done[i] = True
                        next_tokens.append(pad)
                        continue
                    allowed_t = torch.tensor(allowed, device=self.device)
                    logits = (hidden[i].float() @ out_w[allowed_t].float().T)
                    if softcap:
                        logits = torch.tanh(logits / softcap) * softcap
                    logp = torch.log_softmax(logits, dim=-1)
                    j = int(torch.argmax(logp))
                    token = allowed[j]
                    logprob[i] += float(logp[j])
                    chosen[i].append(token)
                    guides[i].advance(token, return_tokens=False)
                    next_tokens.append(token)
                    if guides[i].is_finished() or all(t == eos for t in guides[i].get_tokens()):
                        done[i] = True
                if all(done):
                    break
                step_ids = torch.tensor(next_tokens, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=self.device)], dim=1)
                step_pos = step_pos[:, -1:] + 1
        results = []
        for i in range(n):
            text = self.tokenizer.decode(chosen[i], skip_special_tokens=True)
            if text not in constraints[i].options:
                raise RuntimeError(f"constrained decoding produced {text!r}, which is not an allowed option")
            results.append(Choice(text, math.exp(logprob[i])))
        return results

    def generate(self, prompt: list[int], max_new_tokens: int, stop: str | None = None) -> str:
        """Free greedy generation (the reasoning of thinking mode), stopped at `stop` or the token budget."""
        import torch

        ids = torch.tensor([prompt], device=self.device)
        kwargs = {"stop_strings": [stop], "tokenizer": self.tokenizer} if stop else {}
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      **kwargs)
        text = self.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        return text.split(stop)[0] if stop else text


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1000
