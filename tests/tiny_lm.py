"""A tiny, randomly initialised Qwen2 language model built locally, for tests and timing benches.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here with the ``tokenizers``
library on the sample narrations (``/work/shared/texts`` / ``tests/data``), it carries a
ChatML chat template so ``apply_chat_template`` works (and ``transformers serve`` can use it),
and the model is ``Qwen2ForCausalLM`` with 2 layers of width 64 and random weights.

Its text is gibberish. It is good for what the tests check -- ordering, streaming in several
pieces, cancellation, error paths, timing of the plumbing -- and for nothing about quality.
Its ``generation_config`` suppresses the special tokens (so it never stops on its own and every
generation runs to ``max_tokens``: piece counts do not depend on a lucky early EOS) and every
token that is not printable ASCII (so the gibberish is words, spaces and punctuation).

    python -m tests.tiny_lm /tmp/tiny-lm     # build it by hand
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_CORPUS_DIRS = (ROOT.parent / "shared" / "texts", ROOT / "tests" / "data", ROOT / "config" / "samples")
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: Written last: a directory with it is complete (another builder may have been interrupted).
MARKER = "tiny-lm-complete"
#: The sentence ``models`` key of every report that used this model.
DESCRIPTION = "tiny random Qwen2: timing only"


def corpus() -> list[str]:
    """The narration texts the tokenizer is trained on (at least the repo's own samples)."""
    texts: list[str] = []
    for base in _CORPUS_DIRS:
        if base.is_dir():
            texts += [p.read_text(encoding="utf-8") for p in sorted(base.glob("*.txt"))]
    if not texts:
        raise FileNotFoundError(f"no sample texts found in {', '.join(map(str, _CORPUS_DIRS))}")
    return texts


def build(path: Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Build the tokenizer and the model into ``path`` (replaced if incomplete); return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    if (path / MARKER).is_file():
        return path
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-lm-", dir=path.parent if path.parent.is_dir() else None))
    try:
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        bpe.train_from_iterator(corpus(), trainer=trainer)
        tokenizer: Any = PreTrainedTokenizerFast(
            tokenizer_object=bpe,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>"],
        )
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(tmp)

        # Special tokens, control characters and stray UTF-8 bytes are never generated: the
        # gibberish stays printable ASCII words, spaces and punctuation (see the module docstring).
        special = {int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
        suppressed = [
            i
            for i in range(len(tokenizer))
            if i in special or not all(" " <= ch <= "~" for ch in tokenizer.decode([i]))
        ]
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=int(tokenizer.convert_tokens_to_ids("<|endoftext|>")),
            eos_token_id=int(tokenizer.convert_tokens_to_ids("<|im_end|>")),
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).eval()
        model.generation_config = GenerationConfig(
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            do_sample=True,
            temperature=1.0,
            suppress_tokens=suppressed,
        )
        model.save_pretrained(tmp)
        (tmp / MARKER).write_text(DESCRIPTION + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-lm")
    print(build(target))
