"""The coder: a diagnosis text in, valid ICD-10-GM and ICD-O-3 codes out.

Modes
- `retrieval`: the top retrieved code per target, no language model (the baseline every LLM mode must beat).
  Its confidence is the top candidate's share of the fused retrieval scores; `is_tumor` is whether that ICD-10-GM
  code lies in chapter II (Neubildungen, C00-D48).
- `base`: the base model, no adapter, no candidates (the paper's "before fine-tuning").
- `ft`: the FT-only adapter, no candidates (the paper's system).
- `rag`: the base model choosing among the retrieved candidates.
- `rag+ft`: the RAG adapter choosing among the retrieved candidates.
- `thinking`: the base model writes its reasoning first (a token budget), then answers like `rag`; with a native
  thinking chat template (e.g. Qwen3) that template is used.

Every LLM answer is decoded under an outlines constraint (agent/llm.py): without candidates the answer is one of
the codable codes of the target system, with candidates one of the option letters. Tumor recognition comes first;
both ICD-O-3 fields are null when the model says the text is not a tumor, and morphology is null when the model
answers that no histology is given.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel

from oncocoder import config
from oncocoder.agent import prompts
from oncocoder.agent.llm import LLM, Choice, LLMConfig
from oncocoder.errors import UserError
from oncocoder.index.retrieve import Candidate, Retriever, candidates_json, validate_text

MODES = ("retrieval", "base", "ft", "rag", "rag+ft", "thinking")
ADAPTER_MODES = {"ft": "ft", "rag+ft": "rag-ft"}  # mode -> adapter name
RAG_MODES = ("rag", "rag+ft", "thinking")
SHIPPED_ADAPTERS = Path(__file__).resolve().parent / "adapters"
TUMOR_CHAPTER = "02"  # ICD-10-GM chapter II, Neubildungen (C00-D48)


class CodeResult(BaseModel):
    code: str
    title: str
    confidence: float


class Prediction(BaseModel):
    id: str | int | None = None
    text: str | None = None
    mode: str
    icd10gm: CodeResult | None = None
    icdo_topography: CodeResult | None = None
    icdo_morphology: CodeResult | None = None
    is_tumor: bool | None = None
    is_tumor_confidence: float | None = None
    candidates: dict[str, list[dict]] | None = None
    model: str | None = None
    adapter: str | None = None
    reasoning: str | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class CoderConfig:
    mode: str = config.DEFAULT_MODE
    base_model: str = config.DEFAULT_BASE_MODEL
    adapters: dict[str, str] = field(default_factory=lambda: {
        name: str(SHIPPED_ADAPTERS / name) for name in ADAPTER_MODES.values()})
    # candidates shown to the model per target (the prediction lists `search_k` of them)
    k: dict[str, int] = field(default_factory=lambda: {"icd10gm": 10, "icdo_topography": 5, "icdo_morphology": 5})
    search_k: int = 10
    thinking_budget: int = 256
    batch_size: int | None = None  # texts per forward pass; None: 16 on a GPU, 1 on a CPU (batching does not
    # lower the time per text there)
    device: str | None = None

    def with_mode(self, mode: str) -> "CoderConfig":
        return replace(self, mode=mode)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    return mode


@dataclass
class _Job:
    """One text on its way through the pipeline."""

    pred: Prediction
    text: str = ""
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    reasoning_prefix: str | None = None


class Coder:
    """Codes texts in any mode; the retriever, the model and the adapters load once, on first use."""

    def __init__(self, cfg: CoderConfig = CoderConfig(), retriever: Retriever | None = None, llm: LLM | None = None):
        check_mode(cfg.mode)
        self.cfg = cfg
        self._retriever = retriever
        self._llm = llm
        self.catalogue = retriever.catalogue if retriever else None

    # ------------------------------------------------------------------ resources
    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever()
            self.catalogue = self._retriever.catalogue
        return self._retriever

    def loaded(self, mode: str) -> bool:
        """Whether coding in `mode` can start without loading a model or adapter first."""
        if self._retriever is None:
            return False
        if mode == "retrieval":
            return True
        name = ADAPTER_MODES.get(mode)
        return self._llm is not None and (name is None or name in self._llm.adapters)

    @property
    def batch_size(self) -> int:
        if self.cfg.batch_size:
            return self.cfg.batch_size
        import torch

        on_gpu = (self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return 16 if on_gpu else 1

    def llm_for(self, mode: str) -> LLM:
        if self._llm is None:
            self._llm = LLM(LLMConfig(base_model=self.cfg.base_model, device=self.cfg.device))
        name = ADAPTER_MODES.get(mode)
        if name and name not in self._llm.adapters:
            path = self.cfg.adapters.get(name)
            if not path or not Path(path).exists():
                raise UserError(f"Mode {mode} needs the {name} adapter, but {path} does not exist; train it with "
                                f"`oncocoder finetune` or pass --adapter.")
            self._llm.add_adapter(name, path)
        return self._llm

    # ------------------------------------------------------------------ API
    def code(self, text: str, mode: str | None = None, id: str | int | None = None) -> Prediction:
        return self.code_batch([{"id": id, "text": text}], mode=mode)[0]

    def code_batch(self, rows: list[dict], mode: str | None = None, progress=None) -> list[Prediction]:
        """One prediction per row, in order; a row that fails gets its `error` and the others go on."""
        mode = check_mode(mode or self.cfg.mode)
        out: list[Prediction] = []
        size = self.batch_size
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            t0 = time.perf_counter()
            preds = self._code_chunk(chunk, mode)
            per_text = (time.perf_counter() - t0) * 1000 / max(1, len(chunk))
            for p in preds:
                p.latency_ms = round(per_text, 1)
            out.extend(preds)
            if progress is not None:
                progress(len(chunk))
        return out

    # ------------------------------------------------------------------ pipeline
    def _code_chunk(self, rows: list[dict], mode: str) -> list[Prediction]:
        jobs = []
        for row in rows:
            pred = Prediction(id=row.get("id"), text=row.get("text") if isinstance(row.get("text"), str) else None,
                              mode=mode, model=None if mode == "retrieval" else self.cfg.base_model,
                              adapter=self.cfg.adapters.get(ADAPTER_MODES[mode]) if mode in ADAPTER_MODES else None)
            job = _Job(pred)
            try:
                if row.get("error"):
                    raise UserError(row["error"])
                job.text = validate_text(row.get("text"))
                job.candidates = self.retriever.search(job.text, k=max(self.cfg.search_k, *self.cfg.k.values()))
                pred.candidates = candidates_json({s: c[:self.cfg.search_k] for s, c in job.candidates.items()})
            except UserError as exc:
                pred.error = str(exc)
            jobs.append(job)
        live = [j for j in jobs if j.pred.error is None]
        try:
            if mode == "retrieval":
                for j in live:
                    self._from_retrieval(j)
            else:
                self._with_llm(live, mode)
        except UserError:
            raise
        except Exception as exc:  # a model failure fails these rows, not the batch
            for j in live:
                j.pred.error = f"The model failed on this text ({exc.__class__.__name__}: {str(exc)[:200]})."
        return [j.pred for j in jobs]

    def _result(self, code: str | None, system: str, confidence: float) -> CodeResult | None:
        if code is None or code == prompts.NO_MORPHOLOGY:
            return None
        return CodeResult(code=code, title=self.catalogue.title(code, system), confidence=round(confidence, 4))

    def _from_retrieval(self, job: _Job) -> None:
        for system in config.SYSTEMS:
            cands = job.candidates[system][:self.cfg.search_k]
            total = sum(c.score for c in cands) or 1.0
            setattr(job.pred, system, self._result(cands[0].code, system, cands[0].score / total) if cands else None)
        top = job.pred.icd10gm
        job.pred.is_tumor = bool(top) and self.catalogue.info(top.code, "icd10gm").chapter == TUMOR_CHAPTER
        if not job.pred.is_tumor:
            job.pred.icdo_topography = job.pred.icdo_morphology = None

    # -- LLM modes
    def _options(self, job: _Job, system: str) -> list[prompts.Option]:
        opts = [prompts.Option(c.code, c.title) for c in job.candidates[system][:self.cfg.k[system]]]
        if system == "icdo_morphology":
            opts.append(prompts.Option(prompts.NO_MORPHOLOGY, prompts.OPTION_NONE_TEXT))
        return opts

    def _ask(self, llm: LLM, jobs: list[_Job], task: str, mode: str) -> list[Choice]:
        """Ask every job the question of `task`; returns the decoded answers (codes, ja/nein or 'keine')."""
        prompt_ids, constraints, option_lists = [], [], []
        for job in jobs:
            if task == "is_tumor":
                user, allowed, opts = prompts.question("is_tumor", job.text), (prompts.YES, prompts.NO), None
            elif mode in RAG_MODES:
                opts = self._options(job, task)
                user = prompts.rag_question(task, job.text, opts)
                allowed = prompts.LABELS[:len(opts)]
            else:
                user, opts = prompts.question(task, job.text), None
                allowed = self._code_set(task)
            if job.reasoning_prefix is not None:
                ids = llm.tokenizer(job.reasoning_prefix + user + f"\n{prompts_cue()}\n",
                                    add_special_tokens=not llm.chat)["input_ids"]
            else:
                ids = llm.prompt_ids(user)
            prompt_ids.append(ids)
            constraints.append(llm.constraint(allowed))
            option_lists.append(opts)
        choices = llm.choose(prompt_ids, constraints)
        return [Choice(opts[prompts.LABELS.index(c.text)].code, c.confidence) if opts else c
                for c, opts in zip(choices, option_lists)]

    def _code_set(self, system: str) -> tuple[str, ...]:
        codes = tuple(self.catalogue.list_codes(system))
        return codes + (prompts.NO_MORPHOLOGY,) if system == "icdo_morphology" else codes

    def _with_llm(self, jobs: list[_Job], mode: str) -> None:
        if not jobs:
            return
        llm = self.llm_for(mode)
        with llm.use(ADAPTER_MODES.get(mode)):
            if mode == "thinking":
                for job in jobs:
                    self._think(llm, job)
            tumor = self._ask(llm, jobs, "is_tumor", mode)
            icd = self._ask(llm, jobs, "icd10gm", mode)
            for job, t, c in zip(jobs, tumor, icd):
                job.pred.is_tumor = t.text == prompts.YES
                job.pred.is_tumor_confidence = round(t.confidence, 4)
                job.pred.icd10gm = self._result(c.text, "icd10gm", c.confidence)
            tumor_jobs = [j for j in jobs if j.pred.is_tumor]
            if tumor_jobs:
                topo = self._ask(llm, tumor_jobs, "icdo_topography", mode)
                morph = self._ask(llm, tumor_jobs, "icdo_morphology", mode)
                for job, t, m in zip(tumor_jobs, topo, morph):
                    job.pred.icdo_topography = self._result(t.text, "icdo_topography", t.confidence)
                    job.pred.icdo_morphology = self._result(m.text, "icdo_morphology", m.confidence)

    def _think(self, llm: LLM, job: _Job) -> None:
        """Reasoning first: the model writes up to `thinking_budget` tokens about the text and its ICD-10-GM
        candidates; every answer is then asked after that reasoning."""
        opts = self._options(job, "icd10gm")
        listing = "\n".join(f"- {o.code} {o.title}" for o in opts)
        user = f"Diagnose: {job.text}\nMögliche ICD-10-GM-Kodes:\n{listing}\n{prompts.THINKING_INSTRUCTION}"
        native = "enable_thinking" in str(getattr(llm.tokenizer, "chat_template", "") or "")
        if native:
            prefix = llm.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                       add_generation_prompt=True, enable_thinking=True)
            stop = "</think>"
        else:
            prefix = f"{user}\nÜberlegung:\n"
            stop = prompts_cue()
        ids = llm.tokenizer(prefix, add_special_tokens=not llm.chat)["input_ids"]
        reasoning = llm.generate(ids, self.cfg.thinking_budget, stop=stop).strip()
        job.pred.reasoning = reasoning
        job.reasoning_prefix = prefix + reasoning + ("\n</think>\n\n" if native else "\n\n")


def prompts_cue() -> str:
    from oncocoder.agent.llm import ANSWER_CUE

    return ANSWER_CUE
