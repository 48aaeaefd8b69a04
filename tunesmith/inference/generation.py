"""A chat run (or a base causal LM) that answers conversations: what evaluation and serving use.

Loads a run folder without any training code (models/loading.py: full weights, or the base model
with the PEFT adapter on top). The same object answers as the base model too (the adapter switched
off), so a comparison never loads the base twice.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.artifacts import Run, is_run
from tunesmith.tasks import chat

Conversation = list[dict[str, Any]]


def _stopped_by(events: Sequence[threading.Event]) -> Any:
    """A stopping criterion that ends each row of the batch at its next token once the row's event is set (a client
    gone, or the server stopped waiting): one for streams and batches alike."""
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
            return torch.tensor([e.is_set() for e in events], dtype=torch.bool, device=input_ids.device)

    return Cancelled()


GREEDY_BELOW = 1e-5  # a temperature under this samples as greedy: logits divided by 1e-308 overflow to inf (NaN draws)


def greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop": the model ended its answer; "length": max_new_tokens ran out


@dataclass
class TokenScores:
    """Loss on assistant tokens over a set of conversations (the same tokens training scores)."""

    loss: float  # mean cross-entropy per scored token
    mean_token_accuracy: float  # share of scored tokens that are the model's top prediction
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 50.0))


class ChatPrompt(str):
    """A conversation's prompt text, knowing the spaces cut from the end of its generation prompt (`answer_prefix`).

    A generation prompt ending in a space ("### Assistant: ") was trained as part of the answer's first token
    (":", " paris"), never alone: a prompt ending in a lone " " token made the tuned model drop the answer's first
    word. The prompt ends before the spaces, so its tokens are a prefix of training's, and the answer's text
    loses the leading space that then comes with it (`strip_answer_prefix`). A plain str (a raw completion's
    prompt) has none: its continuation is kept as generated.
    """

    answer_prefix: str = ""

    @classmethod
    def of(cls, rendered: str) -> ChatPrompt:
        prompt = cls(rendered.rstrip(" "))  # spaces only: a newline ending ChatML's generation prompt is trained alone
        prompt.answer_prefix = rendered[len(prompt):]
        return prompt


def answer_prefix(prompt: str) -> str:
    """The spaces a ChatPrompt cut from its end, which the answer's text then starts with; "" for any other prompt."""
    return getattr(prompt, "answer_prefix", "")


def strip_answer_prefix(text: str, prefix: str) -> str:
    """The answer's text (all of it generated so far) without the leading spaces of `prefix` (at most those): applied to
    the whole text each time, so a stream's pieces stay its prefixes."""
    spaces = len(text) - len(text.lstrip(" "))
    return text[min(len(prefix), spaces):]


class Prompting:
    """What every chat engine answers from its tokenizer alone (the engines differ in `generate_texts`)."""

    tokenizer: Any
    concurrent_calls = 1  # generate_texts calls worth making at once: engines that decode them together take more

    def prompt_text(self, conversation: Conversation) -> ChatPrompt:
        """The text the model continues to answer `conversation` (chat template + generation prompt, without the
        generation prompt's trailing spaces: ChatPrompt)."""
        return ChatPrompt.of(chat.render(self.tokenizer, conversation, generation_prompt=True))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, conversations: Sequence[Conversation], **kwargs: Any) -> list[Completion]:
        """Answer each conversation (the next assistant turn), as a reply without surrounding whitespace. Greedy at
        temperature 0. `generate_texts` keeps the text as generated (what a completion or a stream is)."""
        done = self.generate_texts([self.prompt_text(c) for c in conversations], **kwargs)
        return [dataclasses.replace(c, text=c.text.strip()) for c in done]

    def generate_texts(self, prompts: Sequence[str], **kwargs: Any) -> list[Completion]:
        raise NotImplementedError


# PyTorch samples from one CPU generator per process, and serving runs several models' generate calls in threads at
# once: a seed is kept (the same request, the same answer) only if no other sampling draws from it in the meantime.
_GENERATOR = threading.Lock()


@contextmanager
def _drawing(temperature: float, seed: int | None) -> Iterator[None]:
    """Hold the process's random generator for a sampled generate call (seeded first where asked); greedy calls
    draw nothing and run beside anything."""
    if greedy(temperature):
        yield
        return
    with _GENERATOR:
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _plain_decoding(model: Any) -> None:
    """Decode with the request's settings alone. A run keeps its base's generation_config.json, which may carry a
    repetition penalty, n-gram bans or min_p that the llama.cpp and CTranslate2 engines never apply: `evaluate` and
    `--chat-engine transformers` gave answers the server does not, and temperature 0 was not greedy. generate fills
    whatever a call leaves unset from the model's config, so it is the model's config that is made plain."""
    from transformers import GenerationConfig

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    kept = inner.generation_config
    inner.generation_config = GenerationConfig(bos_token_id=kept.bos_token_id, eos_token_id=kept.eos_token_id,
                                               pad_token_id=kept.pad_token_id)


class ChatModel(Prompting):
    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: Sequence[int], name: str = "model") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self.name = name
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _plain_decoding(model)

    @classmethod
    def from_run(cls, path: str | Path | Run, **load: Any) -> ChatModel:
        """A chat run's model (`load`: models.loading.load_run's options, e.g. a shared base)."""
        from tunesmith.models.loading import load_run

        run = path if isinstance(path, Run) else Run(path)
        loaded = load_run(run, **load)
        return cls(loaded.model, loaded.tokenizer, loaded.stop_token_ids, name=run.manifest.name)

    @classmethod
    def from_base(cls, model_dir: str | Path, chat_template: str | None = None) -> ChatModel:
        """An untuned causal LM folder, with `chat_template` when it has none of its own."""
        from transformers import AutoTokenizer

        from tunesmith.models.loading import load_causal_lm

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        chat.set_chat_template(tokenizer, chat_template, str(model_dir))
        return cls(load_causal_lm(Path(model_dir)), tokenizer, chat.stop_token_ids(tokenizer), name=Path(model_dir).name)

    @classmethod
    def base_of(cls, run: Run) -> ChatModel:
        """The model a run started from: another run (DPO after SFT), or the base model folder."""
        from tunesmith.models.loading import base_model_dir

        base = base_model_dir(run.manifest)
        return cls.from_run(base) if is_run(base) else cls.from_base(base, run.config.model.chat_template)

    @property
    def context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    @contextmanager
    def base_model(self) -> Iterator[None]:
        """Answer as the base model: the adapter switched off for the duration."""
        with self.model.disable_adapter() if self.has_adapter else nullcontext():
            yield


    def _sampling(self, temperature: float, top_p: float) -> dict[str, Any]:
        if not greedy(temperature):  # top_k 0: the whole distribution, as OpenAI, CTranslate2 and llama.cpp sample
            return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}

    def _room(self, width: int, max_new_tokens: int) -> int:
        room = self.context - width if self.context else max_new_tokens  # never past the model's context
        if room < 1:
            raise ValueError(f"a prompt of {width} tokens leaves no room to answer in the model's context of {self.context}")
        return min(max_new_tokens, room)

    def _batches(self, order: list[int], encoded: list[list[int]], batch_size: int, max_new_tokens: int) -> list[list[int]]:
        """Rows (by length) in batches of `batch_size`, each batch only of rows with the same room to answer: a row's
        new tokens are bounded by the batch's longest prompt, so a short prompt beside one near the context had got
        10 tokens where alone it got 40."""
        def room(i: int) -> int:
            return min(max_new_tokens, self.context - len(encoded[i])) if self.context else max_new_tokens

        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < batch_size and room(batches[-1][0]) == room(i):
                batches[-1].append(i)
            else:
                batches.append([i])
        return batches

    def _text(self, tokens: list[int], prefix: str) -> str:
        """The answer's text of `tokens`, without the leading spaces its prompt cut (`prefix`: answer_prefix)."""
        return strip_answer_prefix(self.tokenizer.decode(tokens, skip_special_tokens=True), prefix)

    def _through_stop(self, tokens: list[int], stop: Sequence[str], prefix: str = "") -> int:
        """How many of `tokens` it took to complete a stop string: the answer's usage, as the queued engines count it
        (generation here runs on past the stop string, and those tokens are no part of the answer)."""
        low, high = 1, len(tokens)
        while low < high:  # the shortest prefix whose text holds a stop string
            mid = (low + high) // 2
            text = self._text(tokens[:mid], prefix)
            if any(s and s in text for s in stop):
                high = mid
            else:
                low = mid + 1
        return high

    @torch.inference_mode()
    def generate_texts(self, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                       batch_size: int = 16, cancels: Sequence[threading.Event] | None = None) -> list[Completion]:
        """Continue each prompt text (already in the model's format) until a stop token, a stop string or the limit.

        `cancels`: an event per prompt; a row whose event is set (the server stopped waiting for it) stops at its next
        token, and the rest of its batch goes on.
        """
        from transformers import StoppingCriteriaList

        tok = self.tokenizer
        encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        out: list[Completion | None] = [None] * len(encoded)
        seeded = seed is not None and not greedy(temperature)
        if seeded:
            # A seeded answer is the one the prompt gets alone: rows of one batch drew from one random stream (and
            # were left-padded together), so the same request answered differently beside others (19 of 20).
            batch_size = 1
        pad = tok.pad_token_id
        for idx in self._batches(order, encoded, batch_size, max_new_tokens):
            width = max(len(encoded[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in idx])  # left padding
            mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in idx])
            events = [cancels[i] for i in idx] if cancels is not None else []
            with _drawing(temperature, seed):
                generated = self.model.generate(input_ids=ids, attention_mask=mask,
                                                max_new_tokens=self._room(width, max_new_tokens),
                                                eos_token_id=self.stop_token_ids, pad_token_id=pad,
                                                stopping_criteria=StoppingCriteriaList([_stopped_by(events)] if events else []),
                                                **self._sampling(temperature, top_p))
            for row, i in enumerate(idx):
                new = generated[row, width:].tolist()
                if events and events[row].is_set():  # given up: after its last token the batch padded the row
                    while new and new[-1] == pad:
                        new.pop()
                ended = next((k for k, t in enumerate(new) if t in self.stop_token_ids), None)
                tokens = new if ended is None else new[:ended]
                prefix = answer_prefix(prompts[i])
                text = self._text(tokens, prefix)
                reason = "stop" if ended is not None else "length"
                count = len(tokens) + (ended is not None)
                if any(s and s in text for s in stop):
                    # cut where generation first completed a stop string, as a stream is: the whole text runs on past
                    # it, and a longer stop string starting earlier ("tea tastes wonderful" before "tastes") ends later
                    count, reason = self._through_stop(tokens, stop, prefix), "stop"
                    text = self._text(tokens[:count], prefix)
                    text = text[: min(text.index(s) for s in stop if s and s in text)]
                out[i] = Completion(text, len(encoded[i]), count, reason)
        return [c for c in out if c is not None]

    def stream_text(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int | None = None, stop: Sequence[str] = (), cancel: threading.Event | None = None
                    ) -> Iterator[str | Completion]:
        """Yield the answer's text piece by piece as it is generated, then its Completion.

        Setting `cancel` (a client went away) stops generation at the next token.
        """
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        tok = self.tokenizer
        ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        cancel = cancel or threading.Event()

        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with torch.inference_mode(), _drawing(temperature, seed):
                    result["ids"] = self.model.generate(
                        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self._room(ids.shape[1], max_new_tokens),
                        eos_token_id=self.stop_token_ids, pad_token_id=tok.pad_token_id, streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_stopped_by([cancel])]), **self._sampling(temperature, top_p))
            except Exception as err:  # noqa: BLE001 - re-raised in the consumer
                result["error"] = err
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        raw, text, sent = "", "", 0
        stopped_by_string = False
        for piece in streamer:
            raw += piece
            text = strip_answer_prefix(raw, answer_prefix(prompt))  # the whole text: only its start loses spaces
            cut = min((text.index(s) for s in stop if s and s in text), default=None)
            if cut is not None:
                text, stopped_by_string = text[:cut], True
                cancel.set()
            # hold back a tail that could still become a stop string
            hold = max((len(s) - 1 for s in stop if s), default=0)
            safe = len(text) if stopped_by_string else max(sent, len(text) - hold)
            if safe > sent:
                yield text[sent:safe]
                sent = safe
            if stopped_by_string:
                break
        thread.join()
        if "error" in result:
            raise result["error"]
        if not stopped_by_string and len(text) > sent:
            yield text[sent:]
        new = result["ids"][0, ids.shape[1]:].tolist() if "ids" in result else []
        ended = next((k for k, t in enumerate(new) if t in self.stop_token_ids), None)
        tokens = len(new) if ended is None else ended + 1
        if stopped_by_string:
            tokens = self._through_stop(new if ended is None else new[:ended], stop, answer_prefix(prompt))
        reason = "stop" if ended is not None or stopped_by_string else "length"
        yield Completion(text, int(ids.shape[1]), tokens, reason)

    @torch.inference_mode()
    def token_stats(self, conversations: Sequence[Conversation], batch_size: int = 8) -> list[tuple[float, int, int]]:
        """Per conversation: (summed log-probability, scored tokens, correctly predicted tokens) over the
        trained assistant tokens (weight-0 turns excluded, as in training)."""
        tok = self.tokenizer
        examples = [chat.encode(tok, c) for c in conversations]
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        out: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(examples)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [examples[i] for i in idx]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.tensor([e["input_ids"] + [tok.pad_token_id] * (width - len(e["input_ids"])) for e in batch])
            attention = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch])
            scored = torch.tensor([e["assistant_masks"] + [0] * (width - len(e["input_ids"])) for e in batch]).bool()
            # the last `width` positions: a prompt-tuning run's logits start with its virtual tokens'
            logits = self.model(input_ids=ids, attention_mask=attention).logits[:, -width:-1].float()
            target, keep = ids[:, 1:], scored[:, 1:]
            logp = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            hits = logits.argmax(-1) == target
            for row, i in enumerate(idx):
                k = keep[row]
                out[i] = (float(logp[row][k].sum()), int(k.sum()), int(hits[row][k].sum()))
        return out

    def score(self, conversations: Sequence[Conversation], batch_size: int = 8) -> TokenScores:
        """Loss and token accuracy on the trained assistant tokens of all conversations together."""
        stats = self.token_stats(conversations, batch_size)
        count = sum(n for _, n, _ in stats)
        if count == 0:
            return TokenScores(float("nan"), float("nan"), 0)
        return TokenScores(-sum(lp for lp, _, _ in stats) / count, sum(c for _, _, c in stats) / count, count)
