"""Why ``torch.load(weights_only=True)`` refused a file, in one line that names no unsafe workaround.

torch's message for every refusal starts with advice to retry with ``weights_only=False``, even when
the file is merely truncated or random bytes; following it for a file that names a class would run
code. The checkpoint readers (``ds_engine.checkpoint.files.safe_load`` and
:func:`ds_zero.deepspeed_format.load_deepspeed_file`) report the file and this short reason instead.
"""

from __future__ import annotations

import pickle
import re

# The pickle opcode torch names when a file asks to import something (a class or a function).
_GLOBAL = re.compile(r"\bGLOBAL\b")
_ADVICE = re.compile(r"(weights_only|Please use|Please file|Check the documentation)", re.IGNORECASE)


def _first_sentence(text: str) -> str:
    """The first line of ``text`` up to torch's advice or the end of its first sentence."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    cut = _ADVICE.search(line)
    if cut:
        line = line[: cut.start()].strip()
    head, dot, _ = line.partition(". ")
    return (head + "." if dot else line).strip()


def describe(exc: BaseException) -> tuple[bool, str]:
    """``(unsafe, reason)`` for an exception ``torch.load(weights_only=True)`` raised.

    ``unsafe`` is True when the file asks to import a global (a class or function), i.e. a pickle that
    could run code when loaded; otherwise the file is damaged, truncated or not a torch checkpoint.
    ``reason`` is torch's own explanation without its advice to load with ``weights_only=False``.
    """
    text = str(exc)
    unsafe = isinstance(exc, pickle.UnpicklingError) and bool(_GLOBAL.search(text))
    # torch wraps the unpickler's short message (kept as the context) in its long advice
    inner = (
        exc.__context__ if isinstance(exc, pickle.UnpicklingError) and exc.__context__ is not None else exc
    )
    reason = _first_sentence(str(inner))
    if not reason or _ADVICE.search(reason):
        reason = "unexpected end of file" if isinstance(inner, EOFError) else type(inner).__name__
    return unsafe, reason
