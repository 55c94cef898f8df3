"""math-verify, called where its signal-based timeouts work: a process's main thread.

`verify_here` is what `math_equal` calls in the main thread. Run as a script, this file is the
helper process `math_equal` starts for other threads: it reads one JSON [pred, ref] per line on
stdin and writes one JSON verdict (true, false or null) per line on stdout. It imports nothing from
textgym, so the helper starts in the time math-verify takes to import.
"""

from __future__ import annotations

import json
import sys

TIMEOUT_SECONDS = 2  # math-verify's limit for one parse or one comparison (whole seconds: signal.alarm)


def as_latex(text: str) -> str:
    """Bare text in math mode: math-verify's extractors look for math ("2x+1" bare parses as 2)."""
    text = text.strip()
    return text if text.startswith("$") and text.endswith("$") and len(text) > 1 else f"${text}$"


def verify_here(pred: str, ref: str, timeout: int | None = TIMEOUT_SECONDS) -> bool:
    """math-verify's verdict, computed in this thread (a timeout needs the main thread)."""
    from math_verify import parse, verify

    gold = parse(as_latex(ref), parsing_timeout=timeout)
    answer = parse(as_latex(pred), parsing_timeout=timeout)
    return bool(gold and answer and verify(gold, answer, timeout_seconds=timeout))


def serve() -> None:
    import math_verify  # noqa: F401  (imported before "ready", so the first question is not slow)

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        pred, ref = json.loads(line)
        try:
            verdict = verify_here(pred, ref)
        except BaseException:  # noqa: BLE001  (math-verify's timeout is not an Exception; "no verdict" is safe)
            verdict = None
        sys.stdout.write(json.dumps(verdict) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
