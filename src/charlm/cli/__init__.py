"""Command-line apps (Hydra): ``charlm-train``, ``charlm-sample``, ``charlm-eval``."""
