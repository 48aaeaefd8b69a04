"""A causal LM as one GGUF file in llama.cpp's `llama` architecture: what `tunesmith export --format gguf`
writes and what the llama.cpp chat engine serves from.

The file follows llama.cpp's own converter (convert_hf_to_gguf.py, `LlamaModel`): the `llama`
architecture's hyperparameters, q/k rows permuted to the rotary layout llama.cpp computes with, no
`output` tensor when the LM head is tied to the token embedding (SmolLM2), norms and other 1-D
tensors in F32, and the tokenizer as a byte-level BPE (`gpt2`) vocabulary with merges, token types,
special ids and the chat template. Matrices are F16, or Q8_0 (8-bit, one scale per 32-value block)
where their rows split into whole blocks, as llama.cpp does. Token ids are the tokenizer's own: row i
of the embedding is token i in both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError

SUPPORTED = ("Llama-architecture causal LMs (LlamaForCausalLM, e.g. SmolLM2 and Llama-3-style models) "
             "with a byte-level BPE tokenizer")

# llama.cpp's name for the pre-tokenizer (`tokenizer.ggml.pre`), by the split tokenizer.json describes.
# It picks the regex llama.cpp splits text with; an unknown one would tokenize differently there.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# --- what can be written ----------------------------------------------------------------------


def refuse_unsupported(config: Any, run_path: Path) -> None:
    """Only what llama.cpp's `llama` architecture computes exactly as transformers does."""
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"{run_path}: GGUF (llama.cpp) takes {SUPPORTED}; this run's model is "
                          f"'{getattr(config, 'model_type', '?')}' ({', '.join(config.architectures or ['?'])}).")
    odd = []
    if getattr(config, "hidden_act", "silu") != "silu":
        odd.append(f"activation {config.hidden_act} (llama.cpp's llama computes SiLU)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        odd.append("bias terms in the attention or MLP projections")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        odd.append(f"rope scaling '{rope['rope_type']}'")
    if odd:
        raise ConfigError(f"{run_path}: GGUF (llama.cpp) does not take {', '.join(odd)} yet; it takes {SUPPORTED} "
                          "with plain rotary embeddings.")


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
        raise ConfigError(f"{run_path}: GGUF (llama.cpp) takes {SUPPORTED}; this run has {why}.")
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
            raise ConfigError(f"GGUF: no GGUF name for the tensor '{hf_name}'; supported: {SUPPORTED}")
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


@dataclass
class WrittenRun:
    info: dict[str, Any]  # what write_gguf reports (sizes, tensor types)
    model: Any  # the float32 model the file was written from (an adapter merged)
    tokenizer: Any
    stops: list[int]


def write_run_gguf(run: Run, path: Path, quant: str) -> WrittenRun:
    """The run (an adapter merged into its base) as a GGUF at `path` (`quant`: "f16" or "q8_0")."""
    from tunesmith.models.loading import load_run

    loaded = load_run(run, merge=True)
    model, tokenizer, stops = loaded.model.float().eval(), loaded.tokenizer, list(loaded.stop_token_ids)
    refuse_unsupported(model.config, run.path)
    vocabulary = gguf_vocabulary(tokenizer, model.config.vocab_size, run.path)
    return WrittenRun(write_gguf(model, tokenizer, stops, vocabulary, path, quant, run.manifest.name), model, tokenizer, stops)
