import json

import pytest
import torch

from fusecli.errors import FusecliError
from fusecli.merge.io import INDEX, ModelFolder, ShardedWriter, copy_side_files, parse_size


@pytest.mark.parametrize(
    "size,expected", [(1000, 1000), ("20KB", 20_000), ("5GB", 5 * 10**9), ("2GiB", 2 * 2**30), ("1.5MB", 1_500_000)]
)
def test_parse_size(size, expected):
    assert parse_size(size) == expected


@pytest.mark.parametrize("size", ["lots", "5 parsecs", 0, -3, "0MB"])
def test_parse_size_rejects(size):
    with pytest.raises(FusecliError, match="max_shard_size"):
        parse_size(size)


def test_sharded_folder_reads_like_single_file(tiny):
    with ModelFolder(tiny.m1) as single, ModelFolder(tiny.m1_sharded) as sharded:
        assert len(set(sharded.weight_map.values())) > 1
        assert set(single.names()) == set(sharded.names())
        for name in single.names():
            assert sharded.shape(name) == single.shape(name)
            assert torch.equal(sharded.tensor(name), single.tensor(name))


def test_rows_reads_only_the_first_rows(tiny):
    with ModelFolder(tiny.m3_grown) as folder:
        full = folder.tensor("lm_head.weight")
        assert torch.equal(folder.tensor("lm_head.weight", rows=5), full[:5])


def test_pickle_only_folder_is_refused(tmp_path, tiny):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((tiny.base / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"pickle: never loaded")
    with pytest.raises(FusecliError, match=r"only pickle weights \(pytorch_model.bin\)") as exc:
        ModelFolder(folder)
    assert "\n" not in str(exc.value)


def test_folder_without_weights_or_config(tmp_path, tiny):
    with pytest.raises(FusecliError, match="not found"):
        ModelFolder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FusecliError, match="no config.json"):
        ModelFolder(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FusecliError, match="no model.safetensors"):
        ModelFolder(tmp_path / "empty")


def test_writer_splits_into_shards_and_indexes_them(tmp_path):
    tensors = {"a": torch.zeros(10), "b": torch.ones(10), "c": torch.arange(50, dtype=torch.float32)}
    writer = ShardedWriter(tmp_path, max_bytes=100, layout=[(n, "F32", tuple(t.shape)) for n, t in tensors.items()])
    for name, t in tensors.items():
        writer.add(name, t)
    weight_map = writer.close()
    index = json.loads((tmp_path / INDEX).read_text())
    assert index["weight_map"] == weight_map
    assert index["metadata"]["total_size"] == 4 * 70
    assert sorted(set(weight_map.values())) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "config.json").write_text("{}")
    with ModelFolder(tmp_path) as folder:
        for name, t in tensors.items():
            assert torch.equal(folder.tensor(name), t)
    assert not list(tmp_path.glob(".shard-*"))


def test_side_files_copied_but_not_other_files(tiny, tmp_path):
    copied = copy_side_files(tiny.base, tmp_path)
    assert copied == ["chat_template.jinja", "config.json", "generation_config.json", "tokenizer_config.json"]
