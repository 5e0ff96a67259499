"""An exported model is checked whole before it scores: weights' hash, finite weights and scores,
a readable config.json, the export's vocabulary (srgnn.integrity)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from srgnn.core.cli import run_job
from srgnn.core.errors import InputError
from srgnn.integrity import NonFiniteScores, check_model_matches_manifest, load_checked_model

N_ITEMS = 30


def export(path, n_items=N_ITEMS, fill=None, vocab_rows=None):
    """A real export (srgnn.export.save_model) with an item_vocab.parquet beside it, as stage 3 writes."""
    from srgnn.export import save_model
    from srgnn.model import SRGNN, ModelConfig

    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=n_items, hidden_size=8, max_len=5))
    if fill is not None:
        with torch.no_grad():
            model.embedding.weight.fill_(fill)
    save_model(str(path), model, {"manifest_hash": "sha256:abc"})
    rows = n_items if vocab_rows is None else vocab_rows
    pq.write_table(pa.table({"item_id": [f"i{j}" for j in range(1, rows + 1)],
                             "item_idx": pa.array(range(1, rows + 1), pa.int32())}),
                   str(path / "item_vocab.parquet"))
    return path


@pytest.fixture()
def good(tmp_path):
    return export(tmp_path / "model")


def one_line_error(capsys, fn) -> str:
    """Run ``fn`` as a job does: it must exit 2 with exactly one ``error: ...`` line on stderr."""
    with pytest.raises(SystemExit) as info:
        run_job(fn)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_whole_export_loads(good):
    model, config = load_checked_model(str(good))
    assert config["n_items"] == N_ITEMS and not model.training


def test_flipped_bytes_in_the_weights_are_refused(good, capsys):
    data = bytearray((good / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF                    # one byte inside a tensor: still loads, wrong values
    (good / "model.safetensors").write_bytes(bytes(data))
    from srgnn.export import load_model

    load_model(str(good))                           # safetensors alone does not notice
    line = one_line_error(capsys, lambda: load_checked_model(str(good)))
    assert "model.safetensors do not match config.json" in line and "srgnn-" in line


def test_a_truncated_config_is_one_line(good, capsys):
    text = (good / "config.json").read_text()
    (good / "config.json").write_text(text[: len(text) // 2])
    line = one_line_error(capsys, lambda: load_checked_model(str(good)))
    assert "config.json is not valid JSON" in line
    (good / "config.json").write_text(json.dumps({**json.loads(text), "model_version": "v1"}))
    with pytest.raises(InputError, match="model_version 'v1' is not"):
        load_checked_model(str(good))


def test_non_finite_weights_are_an_error(tmp_path, capsys):
    bad = export(tmp_path / "nan", fill=float("nan"))      # hash and version are consistent
    line = one_line_error(capsys, lambda: load_checked_model(str(bad)))
    assert "tensor 'embedding.weight' holds 248 non-finite value(s)" in line   # (30 + padding) x 8


def test_non_finite_scores_are_an_error(tmp_path):
    """Finite but huge weights overflow to inf/NaN scores: scoring refuses them."""
    from pipelines.evaluate.scoring import model_score_fn
    from srgnn.data import batches_from_arrays
    from srgnn.scoring import score_arrays

    model, _ = load_checked_model(str(export(tmp_path / "huge", fill=3e38)))
    items, lengths = np.array([[1, 2, 0, 0, 0], [3, 0, 0, 0, 0]]), np.array([2, 1])
    with pytest.raises(NonFiniteScores, match=r"model m produced non-finite scores .* for 2 of 2 sessions"):
        score_arrays(model, items, lengths, 3, name="model m")
    batch = next(iter(batches_from_arrays(items, lengths, np.array([1, 2]), np.zeros((2, 5), np.float32),
                                          batch_size=2)))
    with pytest.raises(NonFiniteScores, match="model 'srgnn' at X produced non-finite"):
        model_score_fn(model, torch.device("cpu"), "model 'srgnn' at X")(batch)


def test_the_exported_vocabulary_must_have_the_models_item_count(tmp_path, capsys):
    short = export(tmp_path / "short", vocab_rows=N_ITEMS - 1)
    line = one_line_error(capsys, lambda: load_checked_model(str(short)))
    assert "item_vocab.parquet has 29 rows" in line and "n_items=30" in line
    (short / "item_vocab.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="item_vocab.parquet cannot be read"):
        load_checked_model(str(short))
    (short / "item_vocab.parquet").unlink()           # an export without a vocabulary is fine
    assert load_checked_model(str(short))[1]["n_items"] == N_ITEMS


def test_model_and_manifest_must_agree(good):
    config = json.loads((good / "config.json").read_text())
    check_model_matches_manifest(config, {"n_items": N_ITEMS, "content_hash": "sha256:abc"}, "M", "F")
    with pytest.raises(InputError, match="n_items 30 in M/config.json, 31 in F"):
        check_model_matches_manifest(config, {"n_items": 31, "content_hash": "sha256:abc"}, "M", "F")
    with pytest.raises(InputError, match="manifest_hash=sha256:abc but F has content_hash=sha256:def"):
        check_model_matches_manifest(config, {"n_items": N_ITEMS, "content_hash": "sha256:def"}, "M", "F")
    shutil.rmtree(good)
    with pytest.raises(InputError, match="model folder not found"):
        load_checked_model(str(good))
