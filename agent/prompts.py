"""The questions the model is asked, shared by inference (agent/) and training data (finetune/).

Every question is one user message; the answer is exactly what constrained decoding produces:
- without candidates: a bare code (`C50.4`, `C50.4` topography, `8500/3`), `ja` / `nein` for tumor recognition,
  or `keine` for a morphology the text does not state;
- with candidates (RAG): the letter of one listed option.

Several paraphrases per task (the paper's recipe); inference always uses the first one.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

# What the model answers for "no histology stated" (morphology only).
NO_MORPHOLOGY = "keine"
YES, NO = "ja", "nein"
LABELS = tuple(string.ascii_uppercase)

TARGET_NAMES = {
    "icd10gm": "ICD-10-GM-Kode",
    "icdo_topography": "ICD-O-3-Topographie-Kode",
    "icdo_morphology": "ICD-O-3-Morphologie-Kode",
}

QUESTIONS: dict[str, tuple[str, ...]] = {
    "icd10gm": (
        "Welcher ICD-10-GM-Kode gehört zu der Diagnose „{text}“?",
        "Kodiere die folgende Diagnose nach ICD-10-GM: {text}",
        "Diagnose: {text}\nWie lautet der passende ICD-10-GM-Kode?",
        "Gib den ICD-10-GM-Kode (Version 2025) für „{text}“ an.",
        "Mit welchem ICD-10-GM-Kode wird „{text}“ verschlüsselt?",
    ),
    "icdo_topography": (
        "Welcher ICD-O-3-Topographie-Kode gehört zu der Diagnose „{text}“?",
        "Bestimme die Tumorlokalisation nach ICD-O-3 (Topographie) für: {text}",
        "Diagnose: {text}\nWie lautet der ICD-O-3-Topographie-Kode?",
        "Welche ICD-O-3-Lokalisation (C-Kode) hat „{text}“?",
    ),
    "icdo_morphology": (
        "Welcher ICD-O-3-Morphologie-Kode gehört zu der Diagnose „{text}“?",
        "Bestimme die Histologie nach ICD-O-3 (Morphologie mit Dignität) für: {text}",
        "Diagnose: {text}\nWie lautet der ICD-O-3-Morphologie-Kode?",
        "Welcher Morphologie-Kode nach ICD-O-3 passt zu „{text}“?",
    ),
    "is_tumor": (
        "Handelt es sich bei „{text}“ um eine Tumordiagnose (Neubildung, auch gutartig, in situ oder in der "
        "Vorgeschichte)? Antworte mit ja oder nein.",
        "Ist die folgende Angabe eine Tumordiagnose? {text}\nAntworte mit ja oder nein.",
        "Diagnose: {text}\nBeschreibt das eine Neubildung (ja/nein)?",
        "Gehört „{text}“ zu den Tumorerkrankungen? Antwort: ja oder nein.",
    ),
    "title": (
        "Wie lautet der Titel des ICD-10-GM-Kodes {text}?",
        "Was bedeutet der ICD-10-GM-Kode {text}?",
        "Nenne die Bezeichnung zu {text} (ICD-10-GM).",
    ),
}

RAG_INSTRUCTION = "Wähle die passende Option und antworte nur mit ihrem Buchstaben."
OPTION_NONE_TEXT = "keine Histologie angegeben"


@dataclass(frozen=True)
class Option:
    code: str  # a catalogue code, or NO_MORPHOLOGY
    title: str


# Added to the morphology question when there are no options to choose from.
NO_MORPHOLOGY_HINT = f"Ist keine Histologie angegeben, antworte mit „{NO_MORPHOLOGY}“."


def question(task: str, text: str, variant: int = 0, with_hint: bool = True) -> str:
    templates = QUESTIONS[task]
    q = templates[variant % len(templates)].format(text=text)
    return f"{q} {NO_MORPHOLOGY_HINT}" if task == "icdo_morphology" and with_hint else q


def rag_question(task: str, text: str, options: list[Option], variant: int = 0) -> str:
    """The question with the candidate list; option i is labelled LABELS[i]."""
    if len(options) > len(LABELS):
        raise ValueError(f"at most {len(LABELS)} options")
    lines = [question(task, text, variant, with_hint=False), "Optionen:"]
    for label, opt in zip(LABELS, options):
        shown = OPTION_NONE_TEXT if opt.code == NO_MORPHOLOGY else f"{opt.code} {opt.title}"
        lines.append(f"{label}) {shown}")
    lines.append(RAG_INSTRUCTION)
    return "\n".join(lines)


def messages(user: str, answer: str | None = None) -> list[dict]:
    out = [{"role": "user", "content": user}]
    if answer is not None:
        out.append({"role": "assistant", "content": answer})
    return out


THINKING_INSTRUCTION = ("Überlege zuerst Schritt für Schritt: Um welche Erkrankung handelt es sich, wo sitzt sie, "
                        "welche Histologie ist genannt, und welcher Kode passt am besten? Schreibe deine Überlegung "
                        "kurz auf.")
