"""charlm.data.datamodule: the LightningDataModule that serves a corpus's splits as streams, with
the training position in its state and the evaluation streams' burn-in."""

from __future__ import annotations

import pytest
import torch

from charlm.cli.train import train
from charlm.data.datamodule import CharDataModule
from charlm.errors import CharLMError
from conftest import FAST_TRAIN


def test_train_loader_state_counts_completed_epochs(compose, tmp_path, tiny_corpus):
    # 6,000 characters as 8 streams x 32: 21 training batches per epoch; 47 steps = 2 epochs + 5
    for steps, epoch, consumed in ((42, 2, 0), (47, 2, 5)):
        run = tmp_path / f"run{steps}"
        train(compose("train", run, FAST_TRAIN + [
            f"data.path={tiny_corpus}", "data.splits=[0.9,0.1,0.0]", f"trainer.max_steps={steps}",
            "trainer.val_check_interval=50", "callbacks.samples.length=0", "~callbacks.visualize",
        ]))
        ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        (state,) = ck["loops"]["fit_loop"]["state_dict"]["combined_loader"]
        assert (state["epoch"], state["consumed"]) == (epoch, consumed), state
        assert ck["global_step"] == steps


def test_datamodule_eval_streams_read_the_text_before_their_split(tmp_path, small_corpus):
    dm = CharDataModule(path=str(small_corpus), batch_size=4, seq_len=32, splits=(0.8, 0.1, 0.1),
                        eval_batch_size=3, eval_burn_in=50, cache_dir=str(tmp_path))
    ids = dm.prepare().ids
    (_, _), (vb, ve), (tb, _) = dm.bounds
    val, test = dm.loader("val"), dm.loader("test")
    assert val.burn_in == 50 and dm.loader("train").burn_in == 0
    assert val.burn_in_batch()[0][0].tolist() == ids[vb - 50 : vb].tolist()  # the end of train
    assert test.burn_in_batch()[0][0].tolist() == ids[tb - 50 : tb].tolist()  # the end of val
    with pytest.raises(CharLMError, match="data.eval_burn_in"):
        CharDataModule(path=str(small_corpus), eval_burn_in=-1)
