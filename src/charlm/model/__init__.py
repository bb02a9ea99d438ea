"""The model: a stacked recurrent network (:mod:`.rnn`), its recurrent step (:mod:`.step`), the
n-gram baseline (:mod:`.ngram`) and the state a run carries across a checkpoint (:mod:`.run_state`).
Its training step, the LightningModule, is :class:`charlm.training.module.CharLM`."""

from charlm.model.rnn import CharRNN, State

__all__ = ["CharRNN", "State"]
