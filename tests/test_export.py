"""save_model / load_model: round trip, atomic replace, one clear error per kind of bad folder."""
from __future__ import annotations

import json
import os

import pytest
import torch

from srgnn.core.errors import InputError
from srgnn.export import load_model, save_model
from srgnn.model import SRGNN, ModelConfig


def _model(**kw):
    torch.manual_seed(0)
    return SRGNN(ModelConfig(n_items=12, hidden_size=8, **kw))


def test_round_trip_same_scores_and_config(tmp_path):
    model = _model(variant="fc", readout="att", step=2)
    extra = {"manifest_hash": "abc", "run_date": "2016-06-01", "metrics": {"valid": {"hr@20": 0.5}}}
    written = save_model(str(tmp_path / "model"), model, extra)
    assert sorted(os.listdir(tmp_path / "model")) == ["config.json", "model.safetensors"]
    loaded, config = load_model(str(tmp_path / "model"))
    assert config == written == json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["n_items"] == 12 and config["max_len"] == 50 and config["manifest_hash"] == "abc"
    assert config["model"]["variant"] == "fc" and config["model_version"].startswith("srgnn-")
    items, lengths = torch.tensor([[1, 5, 1, 7], [3, 0, 0, 0]]), torch.tensor([4, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded(items, lengths), model(items, lengths), rtol=0, atol=0)
    assert not loaded.training


def test_rewrite_replaces_and_leaves_no_staging(tmp_path):
    target = tmp_path / "model"
    first = save_model(str(target), _model(), {"model_version": "v1"})
    model2 = _model()
    with torch.no_grad():
        model2.embedding.weight.add_(1.0)
    second = save_model(str(target), model2, {"model_version": "v2"})
    assert (first["model_version"], second["model_version"]) == ("v1", "v2")
    assert sorted(os.listdir(tmp_path)) == ["model"]
    loaded, config = load_model(str(target))
    assert config["model_version"] == "v2"
    assert torch.equal(loaded.embedding.weight, model2.embedding.weight)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(InputError, match="model folder not found"):
        load_model(str(tmp_path / "nope"))
    save_model(str(tmp_path / "m"), _model())
    os.remove(tmp_path / "m" / "model.safetensors")
    with pytest.raises(InputError, match="model.safetensors"):
        load_model(str(tmp_path / "m"))


def test_corrupt_weights_and_config(tmp_path):
    save_model(str(tmp_path / "m"), _model())
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(InputError, match="corrupt"):
        load_model(str(tmp_path / "m"))
    save_model(str(tmp_path / "c"), _model())
    (tmp_path / "c" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json"):
        load_model(str(tmp_path / "c"))


def test_weights_that_do_not_match_the_config(tmp_path):
    save_model(str(tmp_path / "m"), _model())
    config_path = tmp_path / "m" / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["readout"] = "hybrid"
    config["model"]["variant"] = "fc"          # expects the fc edge maps the file lacks
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="do not match.*linear_edge_fc_in"):
        load_model(str(tmp_path / "m"))
    config["model"]["variant"], config["model"]["n_items"] = "srgnn", 20
    config_path.write_text(json.dumps(config))
    with pytest.raises(InputError, match="wrong shapes.*embedding.weight"):
        load_model(str(tmp_path / "m"))


def test_the_export_holds_no_training_choice_and_older_exports_with_kernel_still_load(tmp_path):
    torch.manual_seed(0)
    model = SRGNN(ModelConfig(n_items=9, hidden_size=4, max_len=3))
    config = save_model(str(tmp_path / "m"), model)
    on_disk = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "kernel" not in config["model"] and "kernel" not in on_disk["model"]
    on_disk["model"]["kernel"] = "auto"          # what exports made before the trainer chose the engine
    (tmp_path / "m" / "config.json").write_text(json.dumps(on_disk))
    loaded, loaded_config = load_model(str(tmp_path / "m"))
    assert loaded.cfg == model.cfg and loaded_config["model"]["kernel"] == "auto"
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    on_disk["model"]["colour"] = "blue"          # anything else unknown is still an error
    (tmp_path / "m" / "config.json").write_text(json.dumps(on_disk))
    with pytest.raises(Exception, match="colour"):
        load_model(str(tmp_path / "m"))
