"""charlm: character-level recurrent language models (char-rnn) on Lightning, Hydra and W&B.

Data flows one way: text -> vocab -> ids -> BPTT windows -> model -> loss / samples.

- :mod:`charlm.data`       corpus decoding, vocabulary, id cache, BPTT streams, the DataModule
- :mod:`charlm.model`      the recurrent network, its recurrent step, the n-gram baseline
- :mod:`charlm.sampling`   generating text from a checkpoint
- :mod:`charlm.evaluation` loss / bits per character / perplexity over a text
- :mod:`charlm.training`   the LightningModule (the training step) and what runs around it
- :mod:`charlm.cli`        the Hydra apps ``charlm-train``, ``charlm-sample``, ``charlm-eval``
"""

__version__ = "0.1.0"

from charlm.errors import CharLMError

__all__ = ["CharLMError", "__version__"]
