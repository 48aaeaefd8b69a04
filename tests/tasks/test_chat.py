"""Which tokens of a chat conversation carry loss: every token of the answer, its end-of-turn token, nothing else."""

from __future__ import annotations

import pytest

from tests.tiny_models import CHAT_TEMPLATE, CORPUS
from tunesmith.tasks.chat import _overlaps, assistant_spans, encode

# A generation prompt that ends in a space, as Alpaca-style templates have it.
RESPONSE_TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'user' %}### Instruction: {{ m.content }}\n"
    "{% elif m.role == 'assistant' %}### Response: {{ m.content }}{{ eos_token }}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response: {% endif %}"
)


@pytest.fixture(scope="module")
def bpe_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """A GPT-2 style byte-level BPE: a word and the space before it are one token ("Ġparis")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*CORPUS, "### Response: paris is the capital", "### Instruction: hello"], trainer)
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(
        folder)
    return AutoTokenizer.from_pretrained(folder)


def trained(tokenizer, messages) -> list[str]:
    enc = encode(tokenizer, messages)
    return [tokenizer.decode([i]) for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]


CONVERSATION = [
    {"role": "user", "content": "what is the capital of france?"},
    {"role": "assistant", "content": "paris is the capital"},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "positive"},
]


def test_an_answers_first_word_is_trained_when_the_generation_prompt_ends_in_a_space(bpe_tokenizer) -> None:
    bpe_tokenizer.chat_template = RESPONSE_TEMPLATE
    text, spans = assistant_spans(bpe_tokenizer, CONVERSATION)
    assert text[spans[0][0] - 1:spans[0][0]] == " "  # the space is the prompt's, the word the answer's
    # "Ġparis" starts on the prompt's space; it was left untrained, so no answer's first word was ever learnt
    assert "".join(trained(bpe_tokenizer, CONVERSATION)) == " paris is the capital<|im_end|> positive<|im_end|>"


def test_prompt_tokens_that_end_where_the_answer_begins_stay_untrained(bpe_tokenizer) -> None:
    bpe_tokenizer.chat_template = CHAT_TEMPLATE  # "<|im_start|>assistant\n": its "\n" ends exactly at the answer
    assert "".join(trained(bpe_tokenizer, CONVERSATION)) == "paris is the capital<|im_end|>positive<|im_end|>"
    weighted = [*CONVERSATION[:3], {**CONVERSATION[3], "weight": 0}]
    assert "".join(trained(bpe_tokenizer, weighted)) == "paris is the capital<|im_end|>"


@pytest.mark.parametrize(("token", "carries_loss"), [
    ((5, 10), False),   # ends where the answer begins
    ((10, 10), False),  # empty, at the answer's start
    ((9, 12), True),    # the prompt's space and the answer's first word
    ((10, 12), True),
    ((12, 12), True),   # empty, inside the answer (as before)
    ((19, 21), True),   # the end-of-turn token runs past the span's end
    ((20, 21), False),  # after the answer
])
def test_a_token_carries_loss_when_it_holds_some_of_the_answer(token: tuple[int, int], carries_loss: bool) -> None:
    assert _overlaps(token, (10, 20)) is carries_loss

