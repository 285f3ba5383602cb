"""Shared fixtures. Tests run against the real shipped catalogues; the `slow` ones also need the default models and
the retrieval index that `make setup` prepares in the cache ($ONCOCODER_CACHE or ~/.cache/oncocoder)."""

from __future__ import annotations

import pytest

from oncocoder.index.catalogue import load_catalogue


@pytest.fixture(scope="session")
def catalogue():
    return load_catalogue()


@pytest.fixture(scope="session")
def retriever():
    from oncocoder.index.retrieve import Retriever

    return Retriever()


def build_tiny_model(folder, catalogue) -> str:
    """A tiny Llama (hidden 64, 2 layers) with a small BPE tokenizer trained on catalogue text: fast enough for
    LoRA steps, outlines constraints and merging in unit tests."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from oncocoder.agent import prompts

    corpus = [e.text for e in catalogue.entries if e.category in ("C50", "C34", "C61", "C16", "K31", "8140", "8500")]
    corpus += [q for qs in prompts.QUESTIONS.values() for q in qs] + [prompts.RAG_INSTRUCTION, "Antwort: Optionen:"]
    corpus += list(catalogue.codes["icd10gm"]) + list(catalogue.codes["icdo_morphology"])
    corpus += list(catalogue.codes["icdo_topography"]) + ["ja", "nein", "keine", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted({ch for text in corpus for ch in text})
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                        initial_alphabet=alphabet, show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.add_bos_token = True
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, catalogue):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), catalogue)
