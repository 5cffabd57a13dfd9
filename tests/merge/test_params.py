import pytest

from fusecli.config import from_dict
from fusecli.errors import FusecliError
from fusecli.merge import MergeParams


def test_defaults_and_lists():
    p = from_dict(MergeParams, {"method": "ties", "weight": [0.5, 0.5], "density": 1}, "merge")
    assert p.weight == (0.5, 0.5) and p.density == 1.0
    assert from_dict(MergeParams, {}, "merge") == MergeParams(method="sce", sce_variant="release", select_topk=0.1)


@pytest.mark.parametrize(
    "values,match",
    [
        ({"density": 0}, r"merge.density = 0.* \(0, 1\]"),
        ({"density": 1.5}, r"merge.density = 1.5 must be in \(0, 1\]"),
        ({"select_topk": 0}, r"merge.select_topk = 0.* \(0, 1\]"),
        ({"select_topk": 2}, r"select_topk"),
        ({"method": "slerp"}, "unknown merge method"),
        ({"sce_variant": "dense"}, "sce_variant"),
        ({"device": "tpu"}, "device"),
        ({"weight": []}, "empty"),
        ({"weight": float("nan")}, "finite"),
        ({"max_shard_size": "huge"}, "max_shard_size"),
        ({"densty": 0.5}, "unknown key 'densty'"),
    ],
)
def test_invalid_values_are_one_line_errors(values, match):
    with pytest.raises(FusecliError, match=match) as exc:
        from_dict(MergeParams, values, "merge")
    assert "\n" not in str(exc.value)
