"""Generate text from a :class:`~charlm.model.rnn.CharRNN`.

The prime is read once (one forward pass over it) and each new character costs one recurrent
step with the carried state, so the work per character is constant however long the text gets.
That step is the model's :class:`~charlm.model.step.FastStep` (the same weights applied with a
few tensor ops per layer instead of one ``nn.LSTM`` call per character; same logits).
``num_samples`` streams are generated together as one batch.
"""

from __future__ import annotations

import math

import torch

from charlm.data.vocab import Vocab, describe_chars
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.model.step import FastStep
from charlm.options import Opt, check_value


def default_prime(vocab: Vocab) -> str:
    """A prime that is always in the vocabulary: a newline if the corpus has one, else its
    first character (names.txt, for example, has no space)."""
    return "\n" if "\n" in vocab else vocab.chars[0]


def check_temperature(temperature: float) -> float:
    """Validate a sampling temperature (``0`` = greedy).

    Raises:
        CharLMError: if it is negative, NaN or infinite.
    """
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise CharLMError(f"temperature={temperature!r} is not a number") from None
    if math.isnan(t) or math.isinf(t) or t < 0:
        raise CharLMError(f"temperature={temperature} must be a finite number >= 0 (0 is greedy decoding)")
    return t


def next_ids(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next character of each stream.

    Args:
        logits: float ``[N, V]`` logits of the next character.
        temperature: ``0`` picks the arg-max (greedy); otherwise logits are divided by it
            (``< 1`` sharper, ``> 1`` flatter), computed in float32 with the max subtracted,
            so tiny temperatures such as 1e-3 neither overflow nor give NaN.
        top_k: keep exactly the ``k`` most likely characters (``None``: all); of characters
            tied at the ``k``-th logit, those ``torch.topk`` returns first are kept, so a tie
            never lets more than ``k`` through (``top_k=1`` is greedy even on a tie).
        generator: random generator for reproducible draws.

    Returns:
        int64 ``[N, 1]`` ids.
    """
    logits = logits.float()
    if top_k is not None and top_k < logits.size(-1):
        top = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter_(-1, top.indices, top.values)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # max first, then divide: (logits - max) <= 0, so a tiny temperature gives -inf or 0, never inf - inf = NaN
    scaled = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
    probs = torch.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.inference_mode()
def sample(
    net: CharRNN,
    vocab: Vocab,
    prime: str | None = None,
    length: int = 500,
    temperature: float = 1.0,
    top_k: int | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    drop_unknown: bool = False,
) -> list[str]:
    """Sample ``num_samples`` continuations of ``prime``.

    Args:
        net: the model (its device is used; it is put in eval mode for the call).
        vocab: the model's vocabulary.
        prime: text to condition on (default :func:`default_prime`).
        length: number of *new* characters per sample (the prime is not counted).
        temperature: ``>= 0``; ``0`` is greedy.
        top_k: sample among the ``k`` most likely characters only.
        num_samples: independent samples, generated together as one batch.
        seed: seed of the sampling generator (reproducible output).
        drop_unknown: drop prime characters outside the vocabulary instead of failing.

    Returns:
        ``num_samples`` strings, each the prime followed by ``length`` new characters.

    Raises:
        CharLMError: on a bad temperature, a ``top_k``, ``length`` or ``num_samples`` that is not an
            integer in range (``top_k=2.5``, ``length=-1``), or prime
            characters outside the vocabulary (listed).
    """
    temperature = check_temperature(temperature)
    check_value("length", length, Opt(int, min=0))  # new characters
    check_value("num_samples", num_samples, Opt(int, min=1))
    check_value("top_k", top_k, Opt(int, min=1, null="all characters"))
    if prime is None or prime == "":
        prime = default_prime(vocab)
    missing = vocab.unknown(prime)
    if missing:
        if not drop_unknown:
            raise CharLMError(
                f"the prime has {len(missing)} character(s) not in the model's vocabulary: {describe_chars(missing)}. "
                "Remove them, or set drop_unknown=true to drop them."
            )
        prime = "".join(c for c in prime if c in vocab)
        if not prime:
            prime = default_prime(vocab)
    device = next(net.parameters()).device
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(int(seed))
    else:
        generator.seed()
    was_training = net.training
    net.eval()
    try:
        ids = torch.tensor(vocab.encode(prime), dtype=torch.long, device=device).expand(num_samples, -1)
        logits, state = net(ids)  # the prime, read once
        last = logits[:, -1]
        out = torch.empty(num_samples, length, dtype=torch.long, device=device)
        step = FastStep(net) if length > 1 else None
        if step is not None:  # the prime's state in the step's dtype (it may come from an autocast region)
            state = tuple(s.to(step.dtype) for s in state)
        for i in range(length):
            nxt = next_ids(last, temperature, top_k, generator)  # [N, 1]
            out[:, i : i + 1] = nxt
            if i + 1 < length:
                last, state = step.step(nxt, state)
    finally:
        net.train(was_training)
    rows = out.cpu().tolist()
    return [prime + vocab.decode(r) for r in rows]
