"""`--format gguf|gguf-q8_0`: a chat run as one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile.

The file itself (llama.cpp's `llama` architecture, F16 or Q8_0 matrices, the tokenizer and chat template)
is written by models/gguf_file.py, which the llama.cpp chat engine serves from too; an adapter is merged first.

The folder is not a run folder (tunesmith serves run folders, not GGUF): model-<quant>.gguf,
Modelfile, README.txt with the llama.cpp and Ollama commands, and export.json with the self-check:
transformers loads the GGUF back (tokenizer and chat template included) and scores the test
conversations beside the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError
from tunesmith.export.check import CHAT_CHECK_ROWS, test_split
from tunesmith.export.folder import EXPORT_MANIFEST, ExportResult, finish, json_default, safe_name
from tunesmith.models.gguf_file import write_run_gguf

QUANTS = {"gguf": "f16", "gguf-q8_0": "q8_0"}  # export format -> GGUF weight type of the matrices
F16_MAX_RELATIVE_DIFF = 1e-2  # f16 logits further than this share of the logit scale from the run's: a warning
MIN_TOP1_AGREEMENT = {"f16": 0.99, "q8_0": 0.90}  # fewer positions with the run's top token: a warning
# (q8_0 flips near-ties only: 98.7% agreement on a SmolLM2 run's test conversations, 94% on a random tiny model)
MAX_LOSS_DIFF = {"f16": 0.01, "q8_0": 0.05}  # a larger test-loss change: a warning

# Ollama's own ChatML template (ollama/ollama template/chatml.gotmpl): renders a conversation exactly
# as the ChatML Jinja templates do, the generation prompt included.
CHATML_OLLAMA = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                 "<|im_start|>assistant\n")
CHATML_STOPS = ("<|im_start|>", "<|im_end|>")  # a new turn ends the answer too (Ollama's chatml.json)

PROBE_CONVERSATIONS = [  # the self-check's conversations when the run's test split is not at hand
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "How are you today?"}, {"role": "assistant", "content": "I am fine, thank you."}],
]


@dataclass
class GgufTemplate:
    """How Ollama should render conversations for this run."""

    ollama: str | None  # the Go template; None: not convertible, Ollama auto-detects from the GGUF
    system: str | None  # the system prompt the Jinja template adds when a conversation has none


def export_gguf(run: Run, target: Path, fmt: str, check: bool) -> ExportResult:
    quant = QUANTS[fmt]
    name = f"model-{quant}.gguf"
    try:
        written = write_run_gguf(run, target / name, quant)
    except ConfigError as err:
        raise ConfigError(f"{err} Export it with --format merged (a transformers folder) instead") from None
    model, tokenizer, stops, info = written.model, written.tokenizer, written.stops, written.info
    found: list[str] = []
    template = ollama_template(tokenizer)
    if template.ollama is None:
        found.append("the run's chat template is not ChatML, so the Modelfile has no TEMPLATE: `ollama create` uses "
                     "the template it recognises in the GGUF's chat template, or none (check its output)")
    modelfile, skipped = ollama_modelfile(name, tokenizer, stops, template, model.generation_config)
    found += skipped
    (target / "Modelfile").write_text(modelfile, encoding="utf-8")
    ollama_name = safe_name(run.manifest.name)
    commands = usage_commands(name, ollama_name)
    (target / "README.txt").write_text(_readme(run, name, quant, commands), encoding="utf-8")
    m = run.manifest
    manifest = {"format": fmt, "source_run": str(run.path.resolve()), "source_method": m.method,
                "source_adapter": m.adapter, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tunesmith_version": __version__, "file": name, **info,
                "ollama_template": "chatml" if template.ollama else "auto-detected by ollama create",
                "ollama_system": template.system}
    (target / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2, default=json_default), encoding="utf-8")
    if not check:
        result: dict[str, Any] = {"skipped": "self-check skipped (--no-check)"}
    else:
        result = self_check(run, model, tokenizer, target, name)
        found += check_warnings(result, quant)
    del model
    done = finish(target, fmt, result, found)
    done.commands = commands
    return done


# --- Ollama ---------------------------------------------------------------------------------------


def ollama_template(tokenizer: Any) -> GgufTemplate:
    """Ollama's ChatML template when the run's Jinja template renders probe conversations exactly as
    ChatML does (read from what it renders, not from its source), with the system prompt it adds to
    conversations that have none; otherwise no Go template (Ollama auto-detects one from the GGUF)."""
    from tunesmith.tasks import chat

    def chatml(messages: list[dict[str, str]]) -> str:
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"

    full = [{"role": "system", "content": "probe system text"}, {"role": "user", "content": "  first question  "},
            {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "second\nquestion"}]
    alone = [{"role": "user", "content": "a question"}]
    try:
        if chat.render(tokenizer, full, generation_prompt=True) != chatml(full):
            return GgufTemplate(None, None)
        rendered = chat.render(tokenizer, alone, generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that refuses the probes (e.g. no system role) is not ChatML
        return GgufTemplate(None, None)
    prefix, expected = rendered[: len(rendered) - len(chatml(alone))], chatml(alone)
    if not rendered.endswith(expected):
        return GgufTemplate(None, None)
    if not prefix:
        return GgufTemplate(CHATML_OLLAMA, None)
    head, tail = "<|im_start|>system\n", "<|im_end|>\n"
    if prefix.startswith(head) and prefix.endswith(tail) and tail not in prefix[len(head):-len(tail)]:
        return GgufTemplate(CHATML_OLLAMA, prefix[len(head):-len(tail)])
    return GgufTemplate(None, None)


def ollama_modelfile(gguf_name: str, tokenizer: Any, stops: list[int], template: GgufTemplate,
                     generation_config: Any) -> tuple[str, list[str]]:
    """The Modelfile and anything left out of it (a value Ollama's quoting cannot carry)."""
    left_out: list[str] = []
    lines = [f"# Written by tunesmith {__version__}: ollama create NAME -f Modelfile", f"FROM ./{gguf_name}", ""]
    if template.ollama is not None:
        lines += [f'TEMPLATE """{template.ollama}"""', ""]
    else:
        lines += ["# No TEMPLATE: the run's chat template is not ChatML. `ollama create` uses the template it recognises",
                  "# in the GGUF's tokenizer.chat_template (it prints 'using autodetected template ...'); if it names",
                  "# none, add a TEMPLATE for this model (https://github.com/ollama/ollama/blob/main/docs/modelfile.md).", ""]
    if template.system is not None:
        if '"""' in template.system:
            left_out.append('the default system prompt contains """, which a Modelfile cannot quote; SYSTEM left out')
        else:
            lines += [f'SYSTEM """{template.system}"""', ""]
    stop_texts = [tokenizer.convert_ids_to_tokens(int(i)) for i in stops]
    if template.ollama is not None:
        stop_texts += list(CHATML_STOPS)
    for text in dict.fromkeys(stop_texts):
        if '"' in text or "\n" in text:
            left_out.append(f"the stop token {text!r} cannot be quoted in a Modelfile; left out")
            continue
        lines.append(f'PARAMETER stop "{text}"')
    values = {key: getattr(generation_config, key, None) for key in ("temperature", "top_p")}
    if getattr(generation_config, "do_sample", None) is True:
        lines += [f"PARAMETER {key} {float(value):g}" for key, value in values.items() if value is not None]
    elif getattr(generation_config, "do_sample", None) is False or any(v is not None for v in values.values()):
        # transformers decodes greedily unless do_sample is on, whatever the temperature says; Ollama samples at
        # its own 0.8 unless told: temperature 0 is llama.cpp's greedy decoding
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n", left_out


def usage_commands(gguf_name: str, ollama_name: str) -> list[str]:
    return [f"llama-cli -m {gguf_name} -cnv",
            f"llama-server -m {gguf_name} --port 8080",
            f"ollama create {ollama_name} -f Modelfile",
            f"ollama run {ollama_name}"]


def _readme(run: Run, gguf_name: str, quant: str, commands: list[str]) -> str:
    weights = {"f16": "16-bit floats", "q8_0": "8-bit blocks (Q8_0) for the matrices, F32 norms"}[quant]
    return f"""{run.manifest.name}: exported by tunesmith {__version__} from {run.path.resolve()}

{gguf_name}  weights ({weights}), tokenizer and chat template, llama.cpp's `llama` architecture
Modelfile    for Ollama: the chat template as a Go template, stop tokens, defaults
export.json  what was exported, and the self-check (the GGUF loaded back with transformers vs the run)

llama.cpp (in this folder):
  {commands[0]}              chat in the terminal, with the GGUF's chat template
  {commands[1]}    an OpenAI-compatible server on http://127.0.0.1:8080/v1

Ollama (in this folder):
  {commands[2]}
  {commands[3]}

Python, without tunesmith:
  from transformers import AutoModelForCausalLM, AutoTokenizer
  model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{gguf_name}")
  tokenizer = AutoTokenizer.from_pretrained(".", gguf_file="{gguf_name}")
"""


# --- the self-check -------------------------------------------------------------------------------


def self_check(run: Run, model: Any, tokenizer: Any, folder: Path, gguf_name: str) -> dict[str, Any]:
    """Load the GGUF back with transformers and compare it with the run on the test conversations (or on
    two probe conversations when the dataset is not at hand): tokens, logits and loss on the answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.tasks import chat

    table, _ = test_split(run)
    if table is not None:
        rows = table.slice(0, CHAT_CHECK_ROWS).to_pylist()
        conversations = [r["messages"] + ([{"role": "assistant", "content": r["chosen"]}] if "chosen" in r else [])
                         for r in rows]
        source = "test"
    else:
        conversations, source = PROBE_CONVERSATIONS, "probe conversations"
    exported = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_name, dtype=torch.float32).eval()
    exported_tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_name)
    same_tokens, max_diff, scale, agree, positions = 0, 0.0, 0.0, 0, 0
    logp_run = logp_export = 0.0
    scored = 0
    with torch.no_grad():
        for conversation in conversations:
            enc = chat.encode(tokenizer, conversation)
            ids = enc["input_ids"]
            theirs = exported_tokenizer(chat.render(exported_tokenizer, conversation), add_special_tokens=False)["input_ids"]
            same_tokens += int(list(theirs) == ids)
            batch = torch.tensor([ids])
            ref = model(input_ids=batch).logits[0].float()
            got = exported(input_ids=batch).logits[0].float()
            max_diff = max(max_diff, float((ref - got).abs().max()))
            scale = max(scale, float(ref.abs().max()))
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            positions += len(ids)
            keep = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
            target = batch[0, 1:][keep]
            logp_run += float(torch.log_softmax(ref[:-1][keep], -1).gather(1, target[:, None]).sum())
            logp_export += float(torch.log_softmax(got[:-1][keep], -1).gather(1, target[:, None]).sum())
            scored += int(keep.sum())
    out: dict[str, Any] = {"split": source, "n": len(conversations), "positions": positions,
                           "same_tokenization": same_tokens / len(conversations),
                           "max_abs_logit_diff": max_diff, "logit_scale": scale,
                           "relative_logit_diff": max_diff / scale if scale else 0.0,
                           "top1_agreement": agree / positions if positions else float("nan")}
    if scored:
        out.update(tokens=scored, loss_run=-logp_run / scored, loss_export=-logp_export / scored,
                   loss_diff=(logp_run - logp_export) / scored)
    return out


def check_warnings(check: dict[str, Any], quant: str) -> list[str]:
    found = []
    if check["same_tokenization"] < 1.0:
        found.append(f"the GGUF's tokenizer and chat template give other tokens than the run's on "
                     f"{1 - check['same_tokenization']:.0%} of the {check['n']} conversations")
    if quant == "f16" and check["relative_logit_diff"] > F16_MAX_RELATIVE_DIFF:
        found.append(f"the f16 GGUF's logits differ from the run's by up to {check['max_abs_logit_diff']:.3g} "
                     f"({check['relative_logit_diff']:.1%} of their scale)")
    if check["top1_agreement"] < MIN_TOP1_AGREEMENT[quant]:
        found.append(f"the GGUF predicts the run's top token at only {check['top1_agreement']:.1%} of the positions")
    if abs(check.get("loss_diff", 0.0)) > MAX_LOSS_DIFF[quant]:
        found.append(f"the GGUF's test loss differs from the run's by {check['loss_diff']:+.4f}")
    return found
