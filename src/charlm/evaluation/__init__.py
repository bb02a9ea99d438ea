"""Evaluation: token-weighted loss (nats/char), bits per character and perplexity; the report
that compares runs.

- :mod:`charlm.evaluation.metrics`  the token-weighted torchmetrics metric (units: :mod:`charlm.units`)
- :mod:`charlm.evaluation.evaluate` a checkpoint's loss over a whole text, state carried
- :mod:`charlm.evaluation.crlf`     a loss with every newline counted as ``\\r\\n``
- :mod:`charlm.evaluation.report`   a table and plot of a sweep's jobs (``charlm-report``)

Import from the modules: this package imports nothing itself, so the report, which reads files
only, does not pay for torch.
"""
