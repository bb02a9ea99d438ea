"""A run's ``samples.txt``: the samples taken at every validation during training, one block per
sample headed ``### step=<step> temperature=<t>``. Written by
:class:`~charlm.training.callbacks.SampleText` (:func:`samples_block`), read back by
:func:`read_samples` (``charlm-visualize``'s samples timeline, a resumed run's checks)."""

from __future__ import annotations

from pathlib import Path

#: The header line of one sample's block in ``samples.txt``.
SAMPLE_HEADER = "### step={step} temperature={temperature}"


def samples_block(rows: list[list]) -> str:
    """The text :class:`~charlm.training.callbacks.SampleText` appends to ``samples.txt`` for one
    validation's ``rows`` (``[step, temperature, text]`` each): a :data:`SAMPLE_HEADER` line, then
    the text, per row."""
    return "\n".join(f"{SAMPLE_HEADER.format(step=r[0], temperature=r[1])}\n{r[2]}\n" for r in rows) + "\n"


def read_samples(path: str | Path) -> list[dict]:
    """Parse a ``samples.txt`` written by :class:`~charlm.training.callbacks.SampleText` into
    ``[{"step": int, "temperature": float, "text": str}, ...]`` in file order."""
    out: list[dict] = []
    current = None
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line.startswith("### step=") and " temperature=" in line:
            if current:
                out.append(current)
            head = dict(part.split("=", 1) for part in line[4:].split())
            current = {"step": int(head["step"]), "temperature": float(head["temperature"]), "lines": []}
        elif current is not None:
            current["lines"].append(line)
    if current:
        out.append(current)
    for r in out:
        lines = r.pop("lines")
        while lines and lines[-1] == "":
            lines.pop()
        r["text"] = "\n".join(lines)
    return out
