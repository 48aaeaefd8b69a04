"""`--format gguf|gguf-q8_0`: a chat run as one GGUF file for llama.cpp and Ollama, with an Ollama Modelfile.

The file follows llama.cpp's own converter (convert_hf_to_gguf.py, `LlamaModel`): the `llama`
architecture's hyperparameters, q/k rows permuted to the rotary layout llama.cpp computes with, no
`output` tensor when the LM head is tied to the token embedding (SmolLM2), norms and other 1-D
tensors in F32, and the tokenizer as a byte-level BPE (`gpt2`) vocabulary with merges, token types,
special ids and the chat template. `gguf` writes every matrix in F16; `gguf-q8_0` writes those whose
rows split into 32-value blocks as Q8_0 (8-bit, one scale per block: about half the size) and any
other in F16, as llama.cpp does. An adapter is merged into the weights first.

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

import numpy as np

from tunesmith import __version__
from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError
from tunesmith.export.check import CHAT_CHECK_ROWS, test_split
from tunesmith.export.folder import EXPORT_MANIFEST, ExportResult, finish, json_default, safe_name

QUANTS = {"gguf": "f16", "gguf-q8_0": "q8_0"}  # export format -> GGUF weight type of the matrices
SUPPORTED = ("Llama-architecture causal LMs (LlamaForCausalLM, e.g. SmolLM2 and Llama-3-style models) "
             "with a byte-level BPE tokenizer")
F16_MAX_RELATIVE_DIFF = 1e-2  # f16 logits further than this share of the logit scale from the run's: a warning
MIN_TOP1_AGREEMENT = {"f16": 0.99, "q8_0": 0.90}  # fewer positions with the run's top token: a warning
# (q8_0 flips near-ties only: 98.7% agreement on a SmolLM2 run's test conversations, 94% on a random tiny model)
MAX_LOSS_DIFF = {"f16": 0.01, "q8_0": 0.05}  # a larger test-loss change: a warning

# llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`), by the split tokenizer.json describes.
# It picks the regex llama.cpp splits text with; an unknown one would tokenize differently there.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

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
    from tunesmith.models.loading import load_run

    quant = QUANTS[fmt]
    loaded = load_run(run, merge=True)
    model, tokenizer, stops = loaded.model.float().eval(), loaded.tokenizer, loaded.stop_token_ids
    refuse_unsupported(model.config, run.path)
    vocabulary = gguf_vocabulary(tokenizer, model.config.vocab_size, run.path)
    name = f"model-{quant}.gguf"
    found: list[str] = []
    template = ollama_template(tokenizer)
    if template.ollama is None:
        found.append("the run's chat template is not ChatML, so the Modelfile has no TEMPLATE: `ollama create` uses "
                     "the template it recognises in the GGUF's chat template, or none (check its output)")
    info = write_gguf(model, tokenizer, stops, vocabulary, target / name, quant, run.manifest.name)
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


# --- what can be exported -------------------------------------------------------------------------


def refuse_unsupported(config: Any, run_path: Path) -> None:
    """Only what llama.cpp's `llama` architecture computes exactly as transformers does."""
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"{run_path}: --format gguf supports {SUPPORTED}; this run's model is "
                          f"'{getattr(config, 'model_type', '?')}' ({', '.join(config.architectures or ['?'])}). "
                          "Export it with --format merged (a transformers folder) instead")
    odd = []
    if getattr(config, "hidden_act", "silu") != "silu":
        odd.append(f"activation {config.hidden_act} (llama.cpp's llama computes SiLU)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        odd.append("bias terms in the attention or MLP projections")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        odd.append(f"rope scaling '{rope['rope_type']}'")
    if odd:
        raise ConfigError(f"{run_path}: --format gguf does not export {', '.join(odd)} yet; it supports {SUPPORTED} "
                          "with plain rotary embeddings. Export it with --format merged instead")


def rope_parameters(config: Any) -> dict[str, Any]:
    """rope_theta and rope_type, from transformers 5's `rope_parameters` or the older flat fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and "rope_type" not in params:
        params["rope_type"] = scaling.get("rope_type", scaling.get("type"))
    return params


def pre_tokenizer_name(spec: dict[str, Any] | None) -> str | None:
    """llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json pre-tokenizer, None when it has no equivalent."""
    if not spec:
        return None

    def byte_level(part: dict[str, Any], regex: bool) -> bool:
        return (part.get("type") == "ByteLevel" and not part.get("add_prefix_space", False)
                and part.get("use_regex", True) == regex)

    if byte_level(spec, regex=True):
        return "gpt-2"
    parts = (spec.get("pretokenizers") or []) if spec.get("type") == "Sequence" else []
    if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and byte_level(parts[1], regex=True):
        return "smollm"
    if len(parts) == 2 and parts[0].get("type") == "Split" and (parts[0].get("pattern") or {}).get("Regex") == LLAMA3_SPLIT \
            and byte_level(parts[1], regex=False):
        return "llama-bpe"
    return None


@dataclass
class GgufVocabulary:
    tokens: list[str]
    types: list[int]  # gguf.TokenType per token
    merges: list[str]
    pre: str


def gguf_vocabulary(tokenizer: Any, vocab_size: int, run_path: Path) -> GgufVocabulary:
    """The tokenizer as llama.cpp's `gpt2` vocabulary (convert_hf_to_gguf.py's get_vocab_base): one entry
    per embedding row, [PAD<i>] for rows no token uses, added special tokens as CONTROL."""
    from gguf import TokenType

    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    model = spec.get("model") or {}
    why = None
    if model.get("type") != "BPE":
        why = f"a {model.get('type') or type(tokenizer).__name__} tokenizer (GGUF export writes byte-level BPE)"
    elif spec.get("normalizer"):
        why = f"a tokenizer with a {spec['normalizer'].get('type')} normalizer (llama.cpp's BPE has none)"
    elif (pre := pre_tokenizer_name(spec.get("pre_tokenizer"))) is None:
        why = (f"a pre-tokenizer llama.cpp has no name for here ({json.dumps(spec.get('pre_tokenizer'))[:200]}; "
               "known: GPT-2 byte-level, SmolLM's digits + byte-level, Llama 3's split)")
    if why is not None:
        raise ConfigError(f"{run_path}: --format gguf supports {SUPPORTED}; this run has {why}. "
                          "Export it with --format merged instead")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= vocab_size:
        raise ConfigError(f"{run_path}: the tokenizer has ids up to {max(vocab.values())} but the model only "
                          f"{vocab_size} embedding rows; the run's tokenizer and weights do not belong together")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif i in added:
            looks_special = token.startswith("<|") and token.endswith("|>")
            tokens.append(token)
            types.append(TokenType.CONTROL if added[i].special or looks_special else TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return GgufVocabulary(tokens, [int(t) for t in types], merges, pre)


# --- the file -------------------------------------------------------------------------------------


def permute_rotary(weights: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' rotate-half q/k rows -> the interleaved pairs llama.cpp rotates (LlamaModel.permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def write_gguf(model: Any, tokenizer: Any, stops: list[int], vocabulary: GgufVocabulary, path: Path, quant: str,
               name: str) -> dict[str, Any]:
    """Write the GGUF; returns what export.json records (sizes, tensor types)."""
    import gguf

    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)
    _add_tokenizer(writer, tokenizer, stops, vocabulary)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    counts: dict[str, int] = {}
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the tied head from token_embd when `output` is absent
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ConfigError(f"--format gguf: no GGUF name for the tensor '{hf_name}'; supported: {SUPPORTED}")
        data = tensor.detach().float().cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, kv_heads)
        qtype, data = _encode(data, new_name, quant)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
        writer.add_tensor(new_name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"quantization": quant, "size_bytes": path.stat().st_size, "tensor_types": counts,
            "tied_embeddings": tied, "pre_tokenizer": vocabulary.pre}


def _encode(data: np.ndarray, gguf_name: str, quant: str) -> tuple[Any, np.ndarray]:
    """The tensor in its GGUF type: norms and 1-D tensors F32 (llama.cpp computes them in F32), matrices
    F16, or Q8_0 when their rows split into whole 32-value blocks (F16 otherwise, as llama.cpp falls back)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import QuantError, quants

    if data.ndim <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32, data.astype(np.float32)
    if quant == "q8_0":
        try:
            return Q.Q8_0, quants.quantize(data, Q.Q8_0)
        except QuantError:
            pass
    return Q.F16, data.astype(np.float16)


def _add_tokenizer(writer: Any, tokenizer: Any, stops: list[int], vocabulary: GgufVocabulary) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocabulary.pre)
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.types)
    if vocabulary.merges:
        writer.add_token_merges(vocabulary.merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    end_of_turn = [s for s in stops if s != tokenizer.eos_token_id]
    if end_of_turn:  # llama.cpp stops generating on it too
        writer.add_eot_token_id(int(end_of_turn[0]))
    # Whether llama.cpp adds BOS/EOS around a text: what this tokenizer does, found by asking it.
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    writer.add_add_bos_token(len(full) > len(plain) and full[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(full) > len(plain) and full[-1] == tokenizer.eos_token_id)
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default")
    if template:
        writer.add_chat_template(template)


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
    for key in ("temperature", "top_p"):
        value = getattr(generation_config, key, None)
        if value is not None:
            lines.append(f"PARAMETER {key} {float(value):g}")
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
