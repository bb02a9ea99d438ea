"""Training throughput (charlm's Lightning step vs a plain loop), FLOP efficiency, evaluation
throughput, and quality per CPU minute.

charlm is run exactly as ``charlm-train`` builds it (:func:`charlm.cli.train.build` on the real
composed Hydra config, CSV logger, ``log_every_n_steps`` as configured); the plain loop is
embedding -> nn.LSTM -> linear -> cross-entropy -> backward -> clip -> AdamW step over the same
BPTT batches with the same optimizer settings. The two alternate (ABBA order) several times.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

from benchmarks.common import median, sgemm_flops
from charlm.config import config_dir
from charlm.data.streams import IGNORE_INDEX, BPTTLoader
from charlm.units import nats_to_bits


def compose_train(out: Path, overrides: list[str]) -> DictConfig:
    """The real ``train`` config with ``overrides``, Hydra runtime set (as the app has it)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
        cfg.hydra.job.name = "train"
        cfg.paths.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    return cfg


class StepTimer(L.Callback):
    """Time of the end of every training batch and its token count."""

    def __init__(self):
        self.ends: list[float] = []
        self.tokens: list[int] = []
        self.sync = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.sync:
            self.sync()
        self.ends.append(time.perf_counter())
        self.tokens.append(batch[0].numel())


def _tps(ends: list[float], tokens: list[int], warmup: int) -> float:
    """Tokens/s over the steps after ``warmup`` (timed from the end of the last warm-up step)."""
    return sum(tokens[warmup + 1 :]) / (ends[-1] - ends[warmup])


def model_overrides(size: dict) -> list[str]:
    return [
        f"model.hidden_size={size['hidden_size']}",
        f"model.num_layers={size['num_layers']}",
        "model.dropout=0.0",
        f"data.batch_size={size['batch_size']}",
        f"data.seq_len={size['seq_len']}",
        "data.splits=[0.9,0.1,0.0]",
    ]


def charlm_round(size: dict, steps: int, warmup: int, out: Path, trainer_overrides: list[str], compile: bool = False) -> dict:
    """One timed ``trainer.fit`` of ``warmup + steps`` optimizer steps; returns tokens/s."""
    from charlm.cli.train import build

    cfg = compose_train(
        out,
        model_overrides(size)
        + [
            "scheduler=none",
            "callbacks=none",
            "logger=csv",
            f"trainer.max_steps={warmup + steps + 1}",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_model_summary=false",
            "+trainer.enable_progress_bar=false",
            "+trainer.enable_checkpointing=false",
        ]
        + trainer_overrides,
    )
    L.seed_everything(0, verbose=False)
    dm, module, trainer = build(cfg)
    if compile:
        module.net = torch.compile(module.net)
    timer = StepTimer()
    if trainer.strategy.root_device.type == "cuda":
        timer.sync = torch.cuda.synchronize
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=dm)
    return {"tokens_per_sec": _tps(timer.ends, timer.tokens, warmup), "cfg": cfg, "module": module, "dm": dm}


class PlainLM(nn.Module):
    """embedding -> nn.LSTM -> linear: the minimal model the comparison is against."""

    def __init__(self, vocab_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True)
        self.dec = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, state=None):
        out, state = self.lstm(self.emb(x), state)
        return self.dec(out), state


def plain_round(ids, vocab_size: int, size: dict, steps: int, warmup: int, opt_kwargs: dict, device: str = "cpu",
                precision: str = "32-true", compile: bool = False) -> dict:
    """The hand-written loop over the same BPTT batches; returns tokens/s."""
    torch.manual_seed(0)
    model = PlainLM(vocab_size, size["hidden_size"], size["num_layers"]).to(device)
    fwd = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), **opt_kwargs)
    loader = BPTTLoader(ids, size["batch_size"], size["seq_len"])
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    state = None
    ends, tokens = [], []
    for i, (x, y) in enumerate(loader):
        if i == warmup + steps + 1:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast:
            logits, state = fwd(x, state)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        opt.step()
        state = tuple(s.detach() for s in state)
        sync()
        ends.append(time.perf_counter())
        tokens.append(x.numel())
    return {"tokens_per_sec": _tps(ends, tokens, warmup)}


def loader_cost(ids, size: dict, n: int = 20) -> float:
    """Seconds to produce one ``[B, T]`` batch from the memory-mapped ids."""
    loader = BPTTLoader(ids, size["batch_size"], size["seq_len"])
    n = min(n, len(loader))
    t = time.perf_counter()
    for i in range(n):
        loader.batch(i)
    return (time.perf_counter() - t) / n


def bench_training(size: dict, steps: int, warmup: int, rounds: int, out: Path, sgemm_n: int,
                   trainer_overrides: list[str] | None = None, device: str = "cpu", precision: str = "32-true",
                   compile: bool = False) -> dict:
    """Sections 1 and 2: alternate charlm and the plain loop ``rounds`` times (ABBA...), measure
    sgemm in between, and report tokens/s, the charlm/plain ratio and model FLOP/s over sgemm."""
    trainer_overrides = list(trainer_overrides or ["trainer=cpu"])
    charlm_tps, plain_tps, sgemm, ratios = [], [], [], []
    info: dict = {}
    for r in range(rounds):
        order = ("charlm", "plain") if r % 2 == 0 else ("plain", "charlm")
        got = {}
        for who in order:
            if who == "charlm":
                res = charlm_round(size, steps, warmup, out / f"charlm{r}", trainer_overrides, compile=compile)
                if not info:
                    cfg, module, dm = res["cfg"], res["module"], res["dm"]
                    net = getattr(module.net, "_orig_mod", module.net)
                    info = {
                        "flops_per_token": net.flops_per_token(),
                        "vocab_size": len(module.vocab),
                        "opt": {k: (tuple(v) if k == "betas" else v) for k, v in cfg.optimizer.items() if not k.startswith("_")},
                        "ids": dm.split_ids("train"),
                    }
                got[who] = res["tokens_per_sec"]
            else:
                got[who] = plain_round(info["ids"], info["vocab_size"], size, steps, warmup, info["opt"], device, precision, compile)["tokens_per_sec"]
        sgemm.append(sgemm_flops(sgemm_n, repeat=3, device=device))
        charlm_tps.append(got["charlm"])
        plain_tps.append(got["plain"])
        ratios.append(got["charlm"] / got["plain"])
    fpt = info["flops_per_token"]
    s = median(sgemm)
    per_round_eff = [(c * fpt / g, p * fpt / g) for c, p, g in zip(charlm_tps, plain_tps, sgemm)]
    return {
        "size": size,
        "steps_per_round": steps,
        "rounds": rounds,
        "charlm_tokens_per_sec": charlm_tps,
        "plain_tokens_per_sec": plain_tps,
        "ratio_per_round": ratios,
        "ratio_median": median(ratios),
        "flops_per_token": fpt,
        "sgemm_flops": sgemm,
        "charlm_flops_over_sgemm": median([e[0] for e in per_round_eff]),
        "plain_flops_over_sgemm": median([e[1] for e in per_round_eff]),
        "sgemm_median": s,
        "loader_sec_per_batch": loader_cost(info["ids"], size),
    }


# ------------------------------------------------------------------------------ evaluation
@torch.inference_mode()
def plain_eval(net, ids, batch_size: int, seq_len: int) -> float:
    """Token-weighted mean NLL over ``ids``, the straightforward way (reference)."""
    loader = BPTTLoader(ids, batch_size, seq_len, cover_all=True, name="val")
    state, total, n = None, 0.0, 0
    for x, y in loader:
        logits, state = net(x, state)
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum", ignore_index=IGNORE_INDEX).item()
        n += int((y != IGNORE_INDEX).sum())
    return total / n


def bench_eval(module, dm, batch_size: int, seq_len: int, rounds: int = 2, max_chars: int | None = None) -> dict:
    """Section 5: charlm's ``evaluate`` (what ``charlm-eval`` runs) over the whole val split
    (or its first ``max_chars``) vs the plain loop, alternated (ABBA), chars/s. Both start every
    stream from zeros (``burn_in=0``), so they do the same work; the burn-in adds
    ``batch_size x burn_in`` characters read (benchmarks/burn_in.py measures its effect)."""
    from charlm.evaluation.evaluate import evaluate

    net = getattr(module.net, "_orig_mod", module.net).eval()
    ids = dm.split_ids("val")
    if max_chars:
        ids = ids[:max_chars]
    n = int(ids.shape[0]) - 1
    ours, ref = [], []
    for r in range(rounds):
        for who in (("charlm", "plain") if r % 2 == 0 else ("plain", "charlm")):
            t = time.perf_counter()
            if who == "charlm":
                res = evaluate(net, ids, batch_size=batch_size, seq_len=seq_len, burn_in=0)
                ours.append(n / (time.perf_counter() - t))
            else:
                loss = plain_eval(net, ids, batch_size, seq_len)
                ref.append(n / (time.perf_counter() - t))
    return {
        "val_chars": n,
        "charlm_chars_per_sec": median(ours),
        "plain_chars_per_sec": median(ref),
        "ratio": median(ours) / median(ref),
        "same_loss": abs(res["loss"] - loss) < 1e-4,
    }


# ------------------------------------------------------------------------------ quality
def bench_quality(budget_s: float, out: Path, extra: list[str] | None = None) -> dict:
    """Section 6: the recommended CPU config (``trainer=cpu``, defaults otherwise) trained for a
    fixed wall-clock budget (``trainer.max_time``) on Tiny Shakespeare 90/10, then val loss
    over the whole val split (not counted in the budget)."""
    from charlm.cli.train import build
    from charlm.evaluation.evaluate import evaluate

    secs = int(budget_s)
    cfg = compose_train(
        out,
        [
            "trainer=cpu",
            "data.splits=[0.9,0.1,0.0]",
            f"trainer.max_time=00:00:{secs // 60:02d}:{secs % 60:02d}",
            "trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
            "trainer.enable_model_summary=false",
            "+trainer.enable_progress_bar=false",
            "callbacks=none",
            "logger=csv",
        ]
        + list(extra or []),
    )
    L.seed_everything(cfg.seed, verbose=False)
    dm, module, trainer = build(cfg)
    t = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - t
    res = evaluate(module.net, dm.split_ids("val"), batch_size=dm.batch_size, seq_len=dm.seq_len,
                   burn_in=dm.eval_burn_in, context=dm.preceding_ids("val"))
    return {
        "budget_s": budget_s,
        "fit_wall_s": wall,
        "steps": trainer.global_step,
        "model": f"{cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}",
        "batch": f"{cfg.data.batch_size}x{cfg.data.seq_len}",
        "val_loss": res["loss"],
        "val_bpc": nats_to_bits(res["loss"]),
    }
