"""Tiny models and tokenizers built locally (random init, tokenizer trained on the fly): no network.

The pipeline tests run in seconds on these; the packaged real models are for the demo and the
tests marked `slow`.
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "the food was great and the service was friendly",
    "terrible coffee, stale and bitter, would not buy again",
    "great price for a big bag of dried fruit",
    "the tea arrived quickly and tastes wonderful",
    "what is the capital of france? paris is the capital of france.",
    "hello how are you today? i am fine thank you",
] * 20
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(folder: Path, vocab_size: int = 300, chat: bool = False, model_max_length: int = 128) -> Path:
    """A WordPiece tokenizer over a small corpus, saved as a transformers tokenizer folder.

    The vocabulary is built here, sorted, rather than by `WordPieceTrainer`: the trainer breaks ties
    differently from run to run, and every tiny model (and what the tests train from it) would change."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({w for text in CORPUS for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    pieces = [*SPECIALS, *chars, *(f"##{c}" for c in chars), *(w for w in words if len(w) > 1)]
    assert len(pieces) <= vocab_size, f"the tiny corpus needs {len(pieces)} tokens"
    tok = Tokenizer(models.WordPiece(vocab={p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
        fast.eos_token = "<|im_end|>"
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer BERT (hidden 32) with its tokenizer: stands in for `minilm` in tests."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)  # the same tiny model in every test session
    build_tokenizer(folder)
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer Llama (hidden 32) with a chat template: stands in for `smollm2-135m` in tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)  # the same tiny model in every test session
    build_tokenizer(folder, chat=True)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=128, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_gpt2(folder: Path) -> Path:
    """A 2-layer GPT-2 whose tokenizer has no chat template (and no EOS): a base model chat tuning must refuse
    until a template is given."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    build_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder
