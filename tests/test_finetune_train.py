"""LoRA training on a tiny Llama: checkpoint/resume after a kill, merging, manifests and refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from oncocoder.agent import prompts
from oncocoder.agent.llm import LLM, LLMConfig
from oncocoder.errors import UserError
from oncocoder.finetune.train import TrainConfig, merge, read_examples, train


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, catalogue):
    rows = []
    for e in catalogue.entries_of("icd10gm"):
        if e.category in ("C50", "C34", "C61") and catalogue.is_valid(e.code, "icd10gm"):
            rows.append({"messages": prompts.messages(prompts.question("icd10gm", e.text), e.code),
                         "task": "icd10gm", "format": "plain"})
            rows.append({"messages": prompts.messages(prompts.question("is_tumor", e.text), prompts.YES),
                         "task": "is_tumor", "format": "plain"})
    path = tmp_path_factory.mktemp("data") / "plain.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:240]))
    return str(path)


def _cfg(tiny_model, data_file, out, **kw):
    base = dict(data=[data_file], out=str(out), base_model=tiny_model, max_steps=8, epochs=3, batch_size=4,
                dev_size=12, checkpoint_every=2, eval_every=4, warmup_steps=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_adapter_and_manifest(tiny_model, data_file, tmp_path):
    manifest = train(_cfg(tiny_model, data_file, tmp_path / "a"), progress=False)
    out = tmp_path / "a"
    assert (out / "adapter_model.safetensors").exists() and (out / "checkpoint" / "state.pt").exists()
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["base_model"] == tiny_model and saved["steps"] == 8
    assert saved["hyperparameters"]["lora_r"] == 8 and saved["hyperparameters"]["lora_alpha"] == 16
    assert saved["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert saved["data"][0]["sha256"] and saved["hardware"]["device"] == "cpu"
    assert [e["step"] for e in saved["dev_evaluations"]] == [4, 8]
    assert 0.0 <= saved["best"]["exact"] <= 1.0 and saved["best"]["n"] == 12
    assert manifest["examples"]["train"] == 228
    # the adapter loads for coding, and a fresh run into the same folder is refused
    llm = LLM(LLMConfig(base_model=tiny_model))
    llm.add_adapter("ft", out)
    with pytest.raises(UserError, match="not empty"):
        train(_cfg(tiny_model, data_file, out), progress=False)


def test_killed_run_resumes_to_the_same_weights(tiny_model, data_file, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(tiny_model, data_file, straight, max_steps=10, eval_every=0), progress=False)

    killed = tmp_path / "killed"
    args = [sys.executable, "-m", "oncocoder.cli", "finetune", "--data", data_file, "--out", str(killed),
            "--base-model", tiny_model, "--max-steps", "10", "--epochs", "3", "--batch-size", "4", "--dev-size", "12",
            "--checkpoint-every", "2", "--warmup-steps", "2", "--seed", "3"]
    env = {**os.environ, "ONCOCODER_TEST_STEP_DELAY": "0.5"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed / "checkpoint" / "state.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved_step = torch.load(state, weights_only=False)["state"]["step"]
    assert 2 <= saved_step < 10

    manifest = train(_cfg(tiny_model, data_file, killed, max_steps=10, eval_every=0, resume=True), progress=False)
    assert manifest["steps"] == 10
    a = load_file(str(straight / "checkpoint" / "adapter_model.safetensors"))
    b = load_file(str(killed / "checkpoint" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_merged_model_gives_the_same_logits(tiny_model, data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    train(_cfg(tiny_model, data_file, out, max_steps=6, lr=5e-3), progress=False)
    merged_dir = merge(str(out), str(tmp_path / "merged"))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok("Welcher ICD-10-GM-Kode gehört zu der Diagnose Mammakarzinom?", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        plain = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, str(out)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(ids).logits
    assert not torch.allclose(plain, with_adapter, atol=1e-4)  # the adapter changed something
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-4)


def test_bad_input(tiny_model, data_file, tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "Mammakarzinom", "code": "C50.9"}\n')
    with pytest.raises(UserError, match="not a chat-format example"):
        read_examples([str(wrong)])
    with pytest.raises(UserError, match="does not exist"):
        read_examples([str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match="could not be loaded|does not exist"):
        train(_cfg(str(tmp_path / "no-such-model"), data_file, tmp_path / "x"), progress=False)
    with pytest.raises(UserError, match="no checkpoint"):
        train(_cfg(tiny_model, data_file, tmp_path / "y", resume=True), progress=False)
    # an adapter trained on one base model is refused for another
    adapter = tmp_path / "ad"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "manifest.json").write_text(json.dumps({"base_model": "Qwen/Qwen2.5-7B-Instruct"}))
    llm = LLM(LLMConfig(base_model=tiny_model))
    with pytest.raises(UserError, match="trained on Qwen/Qwen2.5-7B-Instruct"):
        llm.add_adapter("ft", adapter)
