"""Character-level tokenizer of the small LM world: one token per character, plus pad and EOS.

The tasks in :mod:`llm_reference.tasks` write prompts and answers with digits, ``+ - = :`` and
one capital letter naming the task, so the whole vocabulary is about twenty tokens. Id 0 is the
padding token and id 1 the end-of-sequence token that closes every answer; characters follow in
the order of :data:`ALPHABET`.

The tokenizer satisfies the small codec interface the sampler needs (``encode``,
``encode_prompt``, ``decode``, ``eos_id``, ``pad_id``), which a Hugging Face tokenizer also
satisfies through the adapter in :mod:`llm_reference.hf`.
"""

from __future__ import annotations

from collections.abc import Sequence

ALPHABET = "0123456789+-=:NARSC"
"""Every character a task may write: digits, operators, separators and the task letters."""

PAD_ID = 0
EOS_ID = 1


class CharTokenizer:
    """Maps each character of ``alphabet`` to one id; ids 0 and 1 are pad and EOS.

    >>> tok = CharTokenizer()
    >>> tok.decode(tok.encode("A12+3:"))
    'A12+3:'
    """

    def __init__(self, alphabet: str = ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            dupes = sorted({c for c in alphabet if alphabet.count(c) > 1})
            raise ValueError(f"alphabet has repeated characters {dupes}; list each character once")
        self.alphabet = alphabet
        self.pad_id = PAD_ID
        self.eos_id = EOS_ID
        self._to_id = {c: i + 2 for i, c in enumerate(alphabet)}
        self._to_char = {i: c for c, i in self._to_id.items()}

    @property
    def vocab_size(self) -> int:
        """Number of ids: the characters plus pad and EOS."""
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` (no EOS appended)."""
        try:
            return [self._to_id[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} in {text!r} is not in the tokenizer's alphabet "
                f"{self.alphabet!r}; add it to the alphabet or change the task's format"
            ) from None

    def encode_prompt(self, prompt: str) -> list[int]:
        """Ids of a task prompt (the same as :meth:`encode`; other codecs may wrap the prompt)."""
        return self.encode(prompt)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, stopping at the first EOS and skipping padding."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.pad_id:
                continue
            if i not in self._to_char:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            out.append(self._to_char[i])
        return "".join(out)
