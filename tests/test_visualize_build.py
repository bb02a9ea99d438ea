"""charlm.visualize.build: the page and plot files of a text (the pages themselves:
test_visualize_page.py)."""

from __future__ import annotations

import pytest

from charlm.data.vocab import Vocab
from charlm.errors import CharLMError
from charlm.model.rnn import CharRNN
from charlm.visualize import visualize_text
from conftest import shakespeare_excerpt


def test_visualize_text_errors_and_rnn(tmp_path, shakespeare_path):
    vocab = Vocab(sorted(set(shakespeare_path.read_text(encoding="utf-8"))))
    net = CharRNN(len(vocab), hidden_size=8, num_layers=1, cell="rnn")
    res = visualize_text(net, vocab, shakespeare_excerpt(30), tmp_path)
    assert res.png_path is None and res.html_path.is_file()  # a plain RNN has no gates to plot
    with pytest.raises(CharLMError, match="not in the model's vocabulary"):
        visualize_text(net, vocab, "{braces}", tmp_path)
    with pytest.raises(CharLMError, match="empty"):
        visualize_text(net, vocab, "", tmp_path)
