"""Tokenizers built on the Hugging Face `tokenizers` library, saved as a standard tokenizer.json.

Two kinds:
  * "char": one token per character, the right choice for Chinese. The vocabulary is the most frequent
    characters of the training text; any other character falls back to its UTF-8 bytes (`<0xE4>` ...),
    so every string round-trips exactly. Technically a BPE model with no merges and byte fallback.
  * "bpe": byte-level BPE, exactly GPT-2's scheme, trained with the library's BpeTrainer.

Byte fallback and `�` (U+FFFD). Reading bytes is safe, writing them is not: three byte tokens make a character
only in the right order, and a lone `<0xE9>`, or one followed by a character token, is not UTF-8; `decode`
(the library's ByteFallback decoder) turns every byte of such a run into `�`, a valid character inside the run
included. A small model writes such runs when its training text spells characters in bytes. The demo's
2,400-token vocabulary holds 2,141 of the 3,622 characters of its reviews; the other 1,481 (each seen at most
5 times: 0.6% of all characters, in 12% of the reviews) were three byte tokens each, and its 0.9M-parameter
model learnt that bytes occur but not how to spell with them: 19 of 256 of its samples showed `�` (17 of the
20 broken runs mid-response, 3 a character cut by the response's length limit). The cure is in the data, not
the decoder: train with `stand_in` (one vocabulary slot for a character such as `□`) and feed the model
`replace_unknown(texts)`, where every character the vocabulary lacks is that stand-in. No byte token is then
ever a training target, so the model learns not to write them; the tokenizer stays a standard tokenizer.json
and `decode(encode(s)) == s` still holds for every string.

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
STAND_IN = "□"  # the mark Chinese typesetting uses for a character that cannot be shown (缺字符号)


class Tokenizer:
    def __init__(self, tok: HFTokenizer):
        self.tok = tok
        ids = [tok.token_to_id(t) for t in SPECIALS]
        if None in ids:
            raise InputError(f"tokenizer has no {SPECIALS[ids.index(None)]} token")
        self.pad_id, self.bos_id, self.eos_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, kind: str = "char",
              stand_in: str | None = None) -> "Tokenizer":
        """A `kind` tokenizer of `vocab_size` tokens for `texts`. `stand_in` (char kind only) is a character
        given one slot of the vocabulary whatever its count, for `replace_unknown` to map rare characters to."""
        texts = list(texts)
        if kind == "char":
            tok = _train_char(texts, vocab_size, stand_in)
        elif kind == "bpe":
            if stand_in is not None:
                raise ValueError("stand_in is for the char kind: byte-level BPE has no unknown characters to map")
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

    def check_model(self, model_config, where) -> None:
        """An InputError naming `where` unless a model of `model_config` has this tokenizer's vocabulary."""
        if self.vocab_size != model_config.vocab_size:
            raise InputError(f"{where}: tokenizer has {self.vocab_size} tokens but the model "
                             f"{model_config.vocab_size}")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    # -- the two ways text enters a model: a whole text to learn from, a prompt to continue --
    def encode_texts(self, texts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Each text -> [bos] + encode(text) + [eos], cut to its first `max_len` tokens.

        What pretraining trains on: a whole text, no prompt. (A prompt with responses, as reward models, DPO,
        RRHF and SFT read them, is encode_prompts ⊕ encode_responses: responses.encode_prompt_responses. A
        whole text is the response to the empty prompt, and both give it the same ids, cut or not.) A cut text
        keeps its start and so ends without EOS, like a policy sample that hit its length limit.
        """
        seqs = [[self.bos_id] + ids + [self.eos_id] for ids in self.encode_batch(texts)]
        return seqs if max_len is None else [s[:max_len] for s in seqs]

    def encode_prompts(self, prompts: list[str], max_len: int | None = None) -> list[list[int]]:
        """Each prompt -> [bos] + encode(prompt), keeping its LAST `max_len` tokens (one warning if any is cut,
        naming the first few by file:line when they were read by data.load_prompts, else by number).

        The end is kept because it is what the response continues.
        """
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be at least 1 (room for [bos]), got {max_len}")
        encoded = [[self.bos_id] + ids for ids in self.encode_batch(prompts)]
        if max_len is None:
            return encoded
        cut = [getattr(text, "where", f"prompt {i + 1}") for i, (text, p) in enumerate(zip(prompts, encoded))
               if len(p) > max_len]    # where: the file:line of a prompt read by data.load_prompts
        if len(cut) == 1:
            warnings.warn(f"{cut[0]}: a prompt longer than {max_len} tokens was cut to its last {max_len}")
        elif cut:
            also = ", ".join(cut[1:3]) + (f" and {len(cut) - 3} more" if len(cut) > 3 else "")
            warnings.warn(f"{cut[0]}: {len(cut)} prompts longer than {max_len} tokens were cut to their last "
                          f"{max_len} (also {also})")
        return [p[-max_len:] for p in encoded]

    def encode_responses(self, responses: list[str]) -> list[list[int]]:
        """Each response -> encode(response) + [eos]: what follows a prompt of `encode_prompts`.

        Encoded apart from its prompt: encode(prompt + response) can merge the prompt's last characters
        with the response's first into one token (byte-level BPE), and then no token boundary marks where
        the response starts. `minirlhf.responses.encode_prompt_responses` joins and truncates the two.
        """
        return [ids + [self.eos_id] for ids in self.encode_batch(responses)]

    def encode_prompt(self, prompt: str, max_len: int | None = None) -> list[int]:
        """encode_prompts for one prompt."""
        return self.encode_prompts([prompt], max_len)[0]

    def replace_unknown(self, texts: list[str], stand_in: str = STAND_IN) -> list[str]:
        """Each text with every character that is not a token of this char tokenizer (one it would spell in
        byte-fallback tokens) replaced by `stand_in`, which must be one: `replace_unknown(["秉承"])` ->
        ["□承"] when 秉 is too rare to have a token. Train and evaluate on these texts and the model never
        learns to write byte tokens (the module docstring says why that matters)."""
        vocab = self.tok.get_vocab(with_added_tokens=False)
        if len(stand_in) != 1 or stand_in not in vocab:
            raise ValueError(f"stand_in {stand_in!r} is not a single-character token of this tokenizer "
                             f"(train it with Tokenizer.train(..., kind='char', stand_in={stand_in!r}))")
        return ["".join(ch if ch in vocab else stand_in for ch in text) for text in texts]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch, skip_special_tokens: bool = True) -> list[str]:
        return self.tok.decode_batch([[int(i) for i in ids] for ids in batch],
                                     skip_special_tokens=skip_special_tokens)


def _train_char(texts: list[str], vocab_size: int, stand_in: str | None = None) -> HFTokenizer:
    n_chars = vocab_size - len(SPECIALS) - len(BYTE_TOKENS)
    if n_chars < 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for characters "
                         f"(3 special + 256 byte-fallback tokens come first)")
    if stand_in is not None and len(stand_in) != 1:
        raise ValueError(f"stand_in must be one character, got {stand_in!r}")
    reserved = [] if stand_in is None else [stand_in]
    counts = Counter(ch for text in texts for ch in text if ch not in reserved)
    chars = [ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n_chars - len(reserved)]]
    vocab = {t: i for i, t in enumerate(SPECIALS + BYTE_TOKENS + chars + reserved)}
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
