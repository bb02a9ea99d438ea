"""Sampling: generate text from a trained model, character by character; a run's ``samples.txt``
(:mod:`charlm.sampling.samples_file`)."""

from charlm.sampling.sampler import default_prime, sample

__all__ = ["default_prime", "sample"]
