"""Sampling: generate text from a trained model, character by character."""

from charlm.sampling.sampler import default_prime, sample

__all__ = ["default_prime", "sample"]
