"""The locally built tiny models that later tests train: they must be real, loadable models."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer


def test_tiny_bert_classifies(tiny_bert: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    batch = tok(["great coffee", "stale bread and bitter tea"], padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()


def test_tiny_llama_generates_with_a_chat_template(tiny_llama: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = tok.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_tiny_models_are_the_same_in_every_process(tmp_path: Path, tiny_llama: Path) -> None:
    # Tests set thresholds on what these models learn, so a build in another process (another session,
    # CI) must give the very same files: a tokenizer trainer that broke ties at random once made it not so.
    import subprocess
    import sys

    script = ("import sys; from pathlib import Path; from tests.tiny_models import build_tiny_llama; "
              "build_tiny_llama(Path(sys.argv[1]))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "again")], check=True, capture_output=True,
                   cwd=Path(__file__).parent.parent)
    for name in ("tokenizer.json", "model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_llama / name).read_bytes(), name
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    assert tok.tokenize("hello, how is the coffee?") == ["hello", ",", "how", "is", "the", "coffee", "?"]
