"""models/hardware.py: what the CPU computes natively, and the shapes bf16 batches are padded to."""

from __future__ import annotations

from tunesmith.models.hardware import BF16_PAD_MULTIPLE, bf16_pad_multiple


def test_bf16_batches_are_padded_to_the_multiple_only_within_the_models_positions() -> None:
    assert bf16_pad_multiple(256, 512) == BF16_PAD_MULTIPLE
    assert bf16_pad_multiple(100, 512) == BF16_PAD_MULTIPLE  # 104 tokens still fit
    assert bf16_pad_multiple(77, 77) is None  # a context of 77 (CLIP's) has no 78th to 80th position
    assert bf16_pad_multiple(256, None) == BF16_PAD_MULTIPLE
    assert bf16_pad_multiple(100, None) is None  # an unknown context: never past max_length
