"""Training loop: learnability on a known Markov chain (vs the oracle), early stopping, model
selection on validation, the learning-rate schedule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from srgnn.core.errors import ConfigError
from srgnn.data import augment_sessions, batches_from_arrays, pad_prefixes
from srgnn.metrics import MetricAccumulator
from srgnn.model import SRGNN, ModelConfig
from srgnn.train import TrainConfig, evaluate, lr_for_epoch, make_optimizer, train, train_step

N_ITEMS, SUCCESSORS, MAX_LEN = 60, 30, 20


@pytest.fixture(scope="module")
def markov():
    """A first-order Markov chain: each item has 30 successors with weights 1/rank; sessions of
    2-8 clicks. The oracle ranks items by the true transition probability from the last click."""
    rng = np.random.default_rng(0)
    P = np.zeros((N_ITEMS + 1, N_ITEMS + 1))
    for i in range(1, N_ITEMS + 1):
        succ = rng.choice(np.arange(1, N_ITEMS + 1), size=SUCCESSORS, replace=False)
        w = 1.0 / np.arange(1, SUCCESSORS + 1)
        P[i, succ] = w / w.sum()

    def split(n_sessions):
        sessions = []
        for _ in range(n_sessions):
            seq = [int(rng.integers(1, N_ITEMS + 1))]
            for _ in range(int(rng.integers(2, 9)) - 1):
                seq.append(int(rng.choice(N_ITEMS + 1, p=P[seq[-1]])))
            sessions.append(seq)
        prefixes, targets = augment_sessions(sessions)
        items, lengths = pad_prefixes(prefixes, MAX_LEN)
        return items, lengths, np.asarray(targets)

    return {"P": P, "train": split(4000), "valid": split(300), "test": split(600)}


def _batches(arrays, shuffle=False, seed=0):
    return list(batches_from_arrays(*arrays, batch_size=100, shuffle=shuffle, seed=seed))


def test_learns_markov_chain_to_90_percent_of_oracle(markov):
    items, lengths, targets = markov["test"]
    last = items[np.arange(len(lengths)), lengths - 1]
    oracle = MetricAccumulator(N_ITEMS)
    oracle.update(torch.tensor(markov["P"][last][:, 1:]), torch.tensor(targets), torch.tensor(lengths))
    oracle_hr = oracle.finalize()["hr@20"]
    assert 0.8 < oracle_hr < 0.97  # the chain is not trivial: even the oracle misses

    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=64, max_len=MAX_LEN))
    cfg = TrainConfig(epochs=3, lr=1e-2, lr_decay_step=2, progress=False, num_threads=1)
    result = train(model, cfg, lambda epoch: _batches(markov["train"], shuffle=True, seed=epoch),
                   _batches(markov["valid"]))
    test = evaluate(model, _batches(markov["test"]))
    assert test["hr@20"] >= 0.9 * oracle_hr, (test["hr@20"], oracle_hr)
    losses = [h["train"]["loss"] for h in result["history"]]
    assert losses[-1] < losses[0]


def test_early_stopping_best_epoch_and_official_test_pick(markov):
    torch.manual_seed(1)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=8, max_len=MAX_LEN))
    # lr 0 after the first epoch freezes the model; from epoch 1 on, validation draws targets the
    # chain never produces, so valid HR/MRR drop and stay down: patience 2 stops after epoch 2
    cfg = TrainConfig(epochs=10, lr=1e-2, lr_decay=0.0, lr_decay_step=1, patience=2,
                      progress=False, num_threads=1)
    small = tuple(a[:1000] for a in markov["train"])
    items, lengths, _ = markov["valid"]
    last = items[np.arange(len(lengths)), lengths - 1]
    rng = np.random.default_rng(3)
    never = np.array([rng.choice(np.flatnonzero(markov["P"][i, 1:] == 0)) + 1 for i in last])
    valid = {0: _batches(tuple(a[:300] for a in small)),
             1: _batches((items, lengths, never))}
    seen = []
    result = train(model, cfg, _batches(small), lambda epoch: valid[min(epoch, 1)],
                   _batches(markov["test"]),
                   on_epoch_end=lambda epoch, record, state: seen.append((epoch, record["lr"])))
    assert seen == [(0, 1e-2), (1, 0.0), (2, 0.0)]
    assert result["stopped_early"] and result["epochs_run"] == 3
    assert result["best_epoch"] == 0
    assert result["valid"] == result["history"][0]["valid"]
    assert result["test"] == result["history"][0]["test"]
    picked = result["test_picked"]  # the model is frozen: every epoch ties on test, last one kept
    assert picked["hr@20"] == result["history"][0]["test"]["hr@20"]
    assert picked["hr@20_epoch"] == 2
    # the model holds the best epoch's weights: re-evaluating gives the recorded valid metrics
    again = evaluate(model, valid[0])
    assert again["mrr@20"] == pytest.approx(result["valid"]["mrr@20"], abs=1e-9)


def test_train_step_lowers_loss_on_a_fixed_batch(markov):
    torch.manual_seed(2)
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=16, max_len=MAX_LEN))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2))
    batch = _batches(markov["train"])[0]
    first = float(train_step(model, optimizer, batch))
    for _ in range(30):
        last = float(train_step(model, optimizer, batch))
    assert last < 0.5 * first


def test_lr_schedule_paper_and_official():
    cfg = TrainConfig()
    assert [lr_for_epoch(cfg, e) for e in range(7)] == pytest.approx(
        [1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5])
    official = cfg.replace(official_lr_schedule=True)
    assert [lr_for_epoch(official, e) for e in range(6)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-4, 1e-5])
    assert (cfg.epochs, cfg.batch_size, cfg.weight_decay, cfg.patience) == (30, 100, 1e-5, 10)


def test_config_from_args_and_bad_metric(markov):
    cfg = TrainConfig.from_args(["--epochs", "2", "--ks", "5,20", "--no-fused-adam", "--amp", "bf16"])
    assert (cfg.epochs, cfg.ks, cfg.fused_adam, cfg.amp) == (2, [5, 20], False, "bf16")
    with pytest.raises(ConfigError, match="amp"):
        TrainConfig().replace(amp="fp8")
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=4, max_len=MAX_LEN))
    with pytest.raises(ConfigError, match="select_metric"):
        train(model, TrainConfig(epochs=1, select_metric="auc", progress=False),
              _batches(tuple(a[:100] for a in markov["train"])), _batches(markov["valid"]))


def test_thread_setting_is_restored(markov):
    before = torch.get_num_threads()
    model = SRGNN(ModelConfig(n_items=N_ITEMS, hidden_size=4, max_len=MAX_LEN))
    small = _batches(tuple(a[:100] for a in markov["train"]))
    train(model, TrainConfig(epochs=1, progress=False, num_threads=1 if before > 1 else 2), small, small)
    assert torch.get_num_threads() == before
