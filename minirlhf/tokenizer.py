"""Tokenizers built on the Hugging Face `tokenizers` library, saved as a standard tokenizer.json.

Two kinds:
  * "char": one token per character, the right choice for Chinese. The vocabulary is the most frequent
    characters of the training text; any other character falls back to its UTF-8 bytes (`<0xE4>` ...),
    so every string round-trips exactly. Technically a BPE model with no merges and byte fallback.
  * "bpe": byte-level BPE, exactly GPT-2's scheme, trained with the library's BpeTrainer.

Special tokens are distinct (PAD must not be EOS, or masking PAD hides EOS and the model never learns to
stop): `<pad>`=0, `<bos>`=1, `<eos>`=2. `encode` adds none of them. A text to learn from is
`[bos] + encode(text) + [eos]` (`encode_texts`), a prompt to continue is `[bos] + encode(prompt)`
(`encode_prompts`) and a response to it is `encode(response) + [eos]` (`encode_responses`, encoded on its
own so that no token spans the prompt/response boundary): every trainer encodes through these three. The
three special tokens are registered as such (as any tokenizer.json does), so a text that literally contains
"<eos>" encodes it as EOS.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import InputError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = [PAD, BOS, EOS]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


class Tokenizer:
    def __init__(self, tok: HFTokenizer):
        self.tok = tok
        ids = [tok.token_to_id(t) for t in SPECIALS]
        if None in ids:
            raise InputError(f"tokenizer has no {SPECIALS[ids.index(None)]} token")
        self.pad_id, self.bos_id, self.eos_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, kind: str = "char") -> "Tokenizer":
        texts = list(texts)
        if kind == "char":
            tok = _train_char(texts, vocab_size)
        elif kind == "bpe":
            tok = _train_bpe(texts, vocab_size)
        else:
            raise ValueError(f"kind must be 'char' or 'bpe', got {kind!r}")
        return cls(tok)

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the library raises a bare Exception on malformed files
            raise InputError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None

    def save(self, path):
        from .checkpoint import atomic_write
        atomic_write(path, lambda tmp: self.tok.save(tmp))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    # -- the two ways text enters a model: a whole text to learn from, a prompt to continue --
    def encode_texts(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Each text -> [bos] + encode(text) + [eos], cut to its first `max_len` tokens.

        What pretraining, reward models and DPO/RRHF train on. A cut text keeps its start and so ends
        without EOS, like a policy sample that hit its length limit.
        """
        seqs = [[self.bos_id] + ids + [self.eos_id] for ids in self.encode_batch(texts)]
        return seqs if max_len is None else [s[:max_len] for s in seqs]

    def encode_prompts(self, prompts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Each prompt -> [bos] + encode(prompt), keeping its LAST `max_len` tokens (one warning if any is cut).

        The end is kept because it is what the response continues.
        """
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be at least 1 (room for [bos]), got {max_len}")
        encoded = [[self.bos_id] + ids for ids in self.encode_batch(prompts)]
        if max_len is None:
            return encoded
        too_long = sum(len(p) > max_len for p in encoded)
        if too_long:
            warnings.warn(f"{too_long} prompt(s) longer than {max_len} tokens were cut to their last {max_len}")
        return [p[-max_len:] for p in encoded]

    def encode_responses(self, responses: list[str]) -> list[list[int]]:
        """Each response -> encode(response) + [eos]: what follows a prompt of `encode_prompts`.

        Encoded apart from its prompt: encode(prompt + response) can merge the prompt's last characters
        with the response's first into one token (byte-level BPE), and then no token boundary marks where
        the response starts. `minirlhf.responses.encode_prompt_responses` joins and truncates the two.
        """
        return [ids + [self.eos_id] for ids in self.encode_batch(responses)]

    def encode_text(self, text: str, max_len: int | None = None) -> list[int]:
        """encode_texts for one text."""
        return self.encode_texts([text], max_len)[0]

    def encode_prompt(self, prompt: str, max_len: int | None = None) -> list[int]:
        """encode_prompts for one prompt."""
        return self.encode_prompts([prompt], max_len)[0]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return self.tok.decode_batch([[int(i) for i in ids] for ids in batch],
                                     skip_special_tokens=skip_special_tokens)


def _train_char(texts: list[str], vocab_size: int) -> HFTokenizer:
    n_chars = vocab_size - len(SPECIALS) - len(BYTE_TOKENS)
    if n_chars < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for characters "
                         f"(3 special + 256 byte-fallback tokens come first)")
    counts = Counter(ch for text in texts for ch in text)
    chars = [ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_chars]]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_TOKENS + chars)}
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, fuse_unk=False))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIALS)
    return tok


def _train_bpe(texts: list[str], vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
