"""`tunesmith export --format gguf|gguf-q8_0`: the GGUF loads back with transformers (weights, tokenizer,
chat template) and gives the run's logits; the Modelfile carries the template, system prompt and stops;
a LoRA run is merged first; what llama.cpp's `llama` architecture cannot take is refused by name.

The tiny model here is a Llama with a byte-level BPE tokenizer, SmolLM2's chat template and grouped
KV heads (the tests' tiny_llama has a WordPiece tokenizer, which GGUF export refuses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.test_train_chat import QA, chat_project
from tests.tiny_models import CORPUS
from tunesmith.artifacts import Run
from tunesmith.cli import run as cli
from tunesmith.errors import ConfigError
from tunesmith.export import export_run
from tunesmith.export.gguf import CHATML_OLLAMA, GgufTemplate, ollama_modelfile, ollama_template
from tunesmith.models.gguf_file import gguf_vocabulary, pre_tokenizer_name, refuse_unsupported, write_gguf
from tunesmith.models.loading import load_run
from tunesmith.training import train

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOL_TEMPLATE = (  # SmolLM2-Instruct's own: ChatML, with a default system prompt
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + SMOL_SYSTEM + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = ["what is the capital of france?", "Héllo wörld 12345 — naïve café 🚀", "  two  spaces\tand a tab\n",
         "<|im_start|>user\nhow is the tea?<|im_end|>\n<|im_start|>assistant\n"]
PROMPTS = [[{"role": "user", "content": q}] for q, _ in QA[:3]] + \
    [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "how was the food?"}]]


def build_bpe_llama(folder: Path, *, tied: bool = True, intermediate: int = 128) -> Path:
    """A 2-layer Llama (hidden 64, 4 heads over 2 KV heads) with a byte-level BPE tokenizer like SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS + [f"{q} {a}" for q, a in QA], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", model_max_length=128)
    fast.chat_template = SMOL_TEMPLATE
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=intermediate, max_position_embeddings=128,
                         rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=tied, bos_token_id=fast.bos_token_id,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bpe_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bpe_llama(tmp_path_factory.mktemp("bpe-llama"))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, bpe_llama: Path) -> Path:
    # fp32 on every host (bf16 is the default where native): the export's checks compare top tokens of a barely
    # trained tiny model, whose near-ties then fall elsewhere
    return train(chat_project(tmp_path_factory.mktemp("full"), bpe_llama, {"max_steps": 2, "bf16": False}, n=40))


def _logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


def _load_gguf(folder: Path, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


def _tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def test_f16_and_q8_0_load_back_with_the_runs_tokenizer_template_and_logits(chat_run: Path, tmp_path: Path) -> None:
    loaded = load_run(chat_run)
    tokenizer = loaded.tokenizer
    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in PROMPTS]
    for fmt, quant in (("gguf", "f16"), ("gguf-q8_0", "q8_0")):
        folder = tmp_path / fmt
        result = export_run(chat_run, fmt, folder)
        name = f"model-{quant}.gguf"
        assert result.path == folder and (folder / name).is_file() and result.warnings == []
        model, gguf_tokenizer = _load_gguf(folder, name)  # plain transformers: no tunesmith, no peft
        assert gguf_tokenizer.chat_template == tokenizer.chat_template == SMOL_TEMPLATE
        for text in TEXTS + prompts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert gguf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids, text
            assert gguf_tokenizer.decode(ids) == tokenizer.decode(ids)
        assert gguf_tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=False) == prompts[0]
        assert gguf_tokenizer.eos_token_id == tokenizer.eos_token_id and gguf_tokenizer.bos_token_id == tokenizer.bos_token_id
        for text in prompts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            want, got = _logits(loaded.model, ids), _logits(model, ids)
            scale = np.abs(want).max()
            if quant == "f16":
                assert np.abs(want - got).max() < 1e-2 * scale
                top2 = np.sort(want, axis=-1)[:, -2:]
                clear = top2[:, 1] - top2[:, 0] > 2 * np.abs(want - got).max()  # no near-tie f16 rounding may flip
                assert clear.mean() > 0.8 and (want.argmax(-1) == got.argmax(-1))[clear].all()
            else:
                cosine = (want * got).sum(-1) / (np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1))
                assert cosine.min() > 0.99 and (want.argmax(-1) == got.argmax(-1)).mean() >= 0.9
        # what export.json says the self-check found: the same numbers, within the same bounds
        info = json.loads((folder / "export.json").read_text())
        check = info["check"]
        assert info["format"] == fmt and info["quantization"] == quant and info["size_bytes"] == (folder / name).stat().st_size
        assert check["split"] == "test" and check["n"] > 0 and check["same_tokenization"] == 1.0
        assert check["top1_agreement"] >= (0.99 if quant == "f16" else 0.9) and abs(check["loss_diff"]) < 0.05
        types = _tensor_types(folder / name)
        assert "output.weight" not in types  # tied to token_embd, as llama.cpp writes SmolLM2
        assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
        matrix = "Q8_0" if quant == "q8_0" else "F16"
        assert {types[n] for n in types if not n.endswith("norm.weight")} == {matrix}
    assert (tmp_path / "gguf-q8_0" / "model-q8_0.gguf").stat().st_size < 0.7 * (tmp_path / "gguf" / "model-f16.gguf").stat().st_size


def test_q_and_k_rows_are_in_llama_cpps_rotary_layout(chat_run: Path, tmp_path: Path) -> None:
    """The file holds llama.cpp's interleaved layout (what llama.cpp computes with), not transformers' own."""
    from gguf import GGUFReader

    export_run(chat_run, "gguf", tmp_path / "g", check=False)
    tensors = {t.name: t for t in GGUFReader(str(tmp_path / "g" / "model-f16.gguf")).tensors}
    state = load_run(chat_run).model.state_dict()
    for name, heads in (("q", 4), ("k", 2)):
        hf = state[f"model.layers.1.self_attn.{name}_proj.weight"].numpy()
        stored = np.asarray(tensors[f"blk.1.attn_{name}.weight"].data, dtype=np.float32).reshape(hf.shape)
        half = hf.shape[0] // heads // 2
        # head h's rotary pair (i, i + half) sits at rows (2i, 2i + 1) of that head in the file
        expected = hf.reshape(heads, 2, half, -1).swapaxes(1, 2).reshape(hf.shape)
        np.testing.assert_allclose(stored, expected, atol=1e-3)
        assert not np.allclose(stored, hf, atol=1e-3)


def test_modelfile_readme_and_cli(chat_run: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "q8"
    assert cli(["export", str(chat_run), "--format", "gguf-q8_0", "--out", str(folder), "--no-check"]) == 0
    shown = capsys.readouterr().out
    assert "gguf-q8_0 export written to" in shown and "ollama create tiny-chat -f Modelfile" in shown
    modelfile = (folder / "Modelfile").read_text()
    lines = modelfile.splitlines()
    assert "FROM ./model-q8_0.gguf" in lines
    assert f'TEMPLATE """{CHATML_OLLAMA}"""' in modelfile
    assert f'SYSTEM """{SMOL_SYSTEM}"""' in lines  # the system prompt SmolLM2's template adds on its own
    assert [line for line in lines if line.startswith("PARAMETER stop")] == \
        ['PARAMETER stop "<|im_end|>"', 'PARAMETER stop "<|im_start|>"']
    assert not any(line.startswith("PARAMETER temperature") for line in lines)  # the run sets none
    readme = (folder / "README.txt").read_text()
    for command in ("llama-cli -m model-q8_0.gguf -cnv", "llama-server -m model-q8_0.gguf --port 8080",
                    "ollama create tiny-chat -f Modelfile", "ollama run tiny-chat", 'gguf_file="model-q8_0.gguf"'):
        assert command in readme, command
    info = json.loads((folder / "export.json").read_text())
    assert info["check"] == {"skipped": "self-check skipped (--no-check)"} and info["ollama_system"] == SMOL_SYSTEM


def test_a_lora_run_is_merged_into_the_gguf(bpe_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.inference.generation import ChatModel

    run = train(chat_project(tmp_path, bpe_llama, {"method": "lora", "max_steps": 2, "learning_rate": 5e-2}, n=40))
    assert Run(run).manifest.adapter
    result = export_run(run, "gguf", tmp_path / "gguf")
    assert result.warnings == [] and result.check["same_tokenization"] == 1.0
    model, tokenizer = _load_gguf(tmp_path / "gguf", "model-f16.gguf")
    tuned = ChatModel.from_run(run)  # the base model with the adapter on top, through PEFT
    assert tuned.has_adapter
    base = AutoModelForCausalLM.from_pretrained(bpe_llama).eval()
    ids = tokenizer.apply_chat_template(PROMPTS[1], add_generation_prompt=True, return_dict=True)["input_ids"]
    want, got = _logits(tuned.model, ids), _logits(model, ids)
    assert np.abs(want - got).max() < 1e-2 * np.abs(want).max()
    assert np.abs(want - _logits(base, ids)).max() > 10 * np.abs(want - got).max()  # the adapter is in there


def test_a_run_trained_with_merge_adapter_exports_its_merged_weights(bpe_llama: Path, tmp_path: Path) -> None:
    """model/ holds full weights (the adapter is in adapter/): every format refused it, looking for
    model/adapter_model.safetensors because the manifest says adapter."""
    from safetensors.torch import load_file

    run = train(chat_project(tmp_path, bpe_llama, {"method": "lora", "merge_adapter": True, "max_steps": 2,
                                                   "learning_rate": 5e-2, "bf16": False}, n=40))
    manifest = Run(run).manifest
    assert manifest.adapter and manifest.merged and not (run / "model" / "adapter_model.safetensors").exists()
    result = export_run(run, "gguf", tmp_path / "gguf")
    assert result.warnings == [] and result.check["same_tokenization"] == 1.0
    model, _ = _load_gguf(tmp_path / "gguf", "model-f16.gguf")
    trained = load_file(run / "model" / "model.safetensors")
    name = "model.layers.0.self_attn.v_proj.weight"  # a LoRA target: the merged weights, not the base's
    torch.testing.assert_close(model.state_dict()[name], trained[name].float(), atol=1e-2, rtol=0)
    for fmt in ("merged", "docker"):
        assert export_run(run, fmt, tmp_path / fmt, check=False).path == tmp_path / fmt


def test_an_untied_head_and_rows_q8_0_cannot_block_are_written_as_llama_cpp_does(tmp_path: Path) -> None:
    """`output.weight` when the head is not tied; ffn_down rows of 80 values (not whole 32-blocks) fall back to F16."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_bpe_llama(tmp_path / "untied", tied=False, intermediate=80)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocabulary = gguf_vocabulary(tokenizer, model.config.vocab_size, folder)
    info = write_gguf(model, tokenizer, [tokenizer.eos_token_id], vocabulary, tmp_path / "out" / "m.gguf", "q8_0", "untied")
    types = _tensor_types(tmp_path / "out" / "m.gguf")
    assert types["output.weight"] == types["token_embd.weight"] == types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.ffn_down.weight"] == types["blk.1.ffn_down.weight"] == "F16"
    assert info["tensor_types"] == {"Q8_0": 14, "F16": 2, "F32": 5} and info["tied_embeddings"] is False
    loaded, _ = _load_gguf(tmp_path / "out", "m.gguf")
    assert loaded.config.tie_word_embeddings is False
    ids = tokenizer("what is the capital of france?")["input_ids"]
    want, got = _logits(model, ids), _logits(loaded, ids)
    assert (want.argmax(-1) == got.argmax(-1)).mean() >= 0.9 and np.abs(want - got).max() < 0.05 * np.abs(want).max()


def test_classification_runs_other_architectures_and_tokenizers_are_refused(tmp_path: Path, tiny_bert: Path,
                                                                           tiny_llama: Path, capsys) -> None:
    from transformers import AutoTokenizer, GPT2Config, LlamaConfig

    from tests.test_train import project

    run = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 1}))
    assert cli(["export", str(run), "--format", "gguf"]) == 2
    assert "is for chat and preference runs" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ConfigError, match="LlamaForCausalLM.*'gpt2'"):
        refuse_unsupported(GPT2Config(), tmp_path)
    with pytest.raises(ConfigError, match="rope scaling 'llama3'"):
        refuse_unsupported(LlamaConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
                           tmp_path)
    with pytest.raises(ConfigError, match="bias terms"):
        refuse_unsupported(LlamaConfig(attention_bias=True), tmp_path)
    with pytest.raises(ConfigError, match="a WordPiece tokenizer"):  # the tests' usual tiny llama
        gguf_vocabulary(AutoTokenizer.from_pretrained(tiny_llama), 400, tmp_path)


def test_pre_tokenizers_map_to_llama_cpp_names() -> None:
    from tokenizers import Regex, pre_tokenizers

    from tunesmith.models.gguf_file import LLAMA3_SPLIT

    def spec(pre) -> dict:
        return json.loads(pre.__getstate__())

    assert pre_tokenizer_name(spec(pre_tokenizers.ByteLevel(add_prefix_space=False))) == "gpt-2"
    smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert pre_tokenizer_name(spec(smollm)) == "smollm"
    llama3 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert pre_tokenizer_name(spec(llama3)) == "llama-bpe"
    assert pre_tokenizer_name(spec(pre_tokenizers.ByteLevel(add_prefix_space=True))) is None  # llama.cpp adds no space
    assert pre_tokenizer_name(spec(pre_tokenizers.Metaspace())) is None
    assert pre_tokenizer_name(None) is None


def test_templates_that_are_not_chatml_get_no_ollama_template(bpe_llama: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(bpe_llama)
    assert ollama_template(tokenizer) == GgufTemplate(CHATML_OLLAMA, SMOL_SYSTEM)
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert ollama_template(tokenizer) == GgufTemplate(CHATML_OLLAMA, None)  # plain ChatML: no SYSTEM line
    tokenizer.chat_template = tokenizer.chat_template.replace("{{ m['content'] }}", "{{ m['content'] | trim }}")
    assert ollama_template(tokenizer) == GgufTemplate(None, None)  # trims: not what Ollama's ChatML renders
    tokenizer.chat_template = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                               "{{ m['content'] }}<|im_end|>{% endfor %}")
    template = ollama_template(tokenizer)
    assert template == GgufTemplate(None, None)
    text, left_out = ollama_modelfile("model-f16.gguf", tokenizer, [tokenizer.eos_token_id], template,
                                      GenerationConfig(temperature=0.3, do_sample=True))
    lines = text.splitlines()
    assert not any(line.startswith(("TEMPLATE", "SYSTEM")) for line in lines) and left_out == []
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' not in lines
    assert "PARAMETER temperature 0.3" in lines and any("autodetected template" in line for line in lines)

    def parameters(**config: Any) -> list[str]:
        text, _ = ollama_modelfile("m.gguf", tokenizer, [], template, GenerationConfig(**config))
        return [line for line in text.splitlines() if line.startswith(("PARAMETER temperature", "PARAMETER top_p"))]

    # transformers decodes greedily without do_sample: the Modelfile had Ollama sample at the ignored temperature
    assert parameters(do_sample=False, temperature=0.6, top_p=0.9) == ["PARAMETER temperature 0"]
    assert parameters(temperature=0.6) == ["PARAMETER temperature 0"]
    assert parameters(do_sample=True, temperature=0.6, top_p=0.9) == ["PARAMETER temperature 0.6", "PARAMETER top_p 0.9"]
    assert parameters() == []  # the run sets nothing: Ollama's own defaults
