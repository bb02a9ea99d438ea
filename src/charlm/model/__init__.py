"""The model: a stacked recurrent network (:mod:`.rnn`) and its training step (:mod:`.module`)."""

from charlm.model.rnn import CharRNN, State
from charlm.model.module import CharLM

__all__ = ["CharLM", "CharRNN", "State"]
