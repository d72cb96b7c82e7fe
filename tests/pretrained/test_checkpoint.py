"""Loading Hugging Face format folders: names, file formats, and the errors for bad folders."""

import pytest
import torch

from conftest import write_tiny_checkpoint
from pretrained import checkpoint
from tools.tiny import hf_names, write_safetensors


def test_checkpoint_round_trip_with_bert_prefix(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m")
    loaded, pooling = checkpoint.load_checkpoint(tmp_path / "m")
    assert pooling == "cls"
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_pytorch_model_bin_without_prefix(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m", mean_pooling=True)
    (tmp_path / "m" / "model.safetensors").unlink()
    state = {k.removeprefix("bert."): v for k, v in hf_names(original.state_dict()).items()}
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    loaded, pooling = checkpoint.load_checkpoint(tmp_path / "m")
    assert pooling == "mean"
    assert torch.equal(loaded.layers[1].value.weight, original.layers[1].value.weight)


def test_safetensors_round_trip_keeps_dtypes(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half()}
    write_safetensors(tensors, tmp_path / "t.safetensors")
    back = checkpoint.read_safetensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m")
    state = hf_names(original.state_dict())
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    state["bert.encoder.layer.1.extra.weight"] = torch.zeros(1)
    write_safetensors(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(checkpoint.CheckpointError, match=r"missing tensors: layers\.1\.key\.weight.*"
                                                   r"unexpected: encoder\.layer\.1\.extra\.weight"):
        checkpoint.load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("remove,message", [("config.json", "no config.json"),
                                            ("model.safetensors", "neither model.safetensors")])
def test_folder_lacking_files(tmp_path, remove, message):
    write_tiny_checkpoint(tmp_path / "m")
    (tmp_path / "m" / remove).unlink()
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_checkpoint(tmp_path / "m")


def test_corrupt_weights_are_a_checkpoint_error(tmp_path):
    write_tiny_checkpoint(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated download
    with pytest.raises(checkpoint.CheckpointError, match="cannot read .*model.safetensors"):
        checkpoint.load_checkpoint(tmp_path / "m")
