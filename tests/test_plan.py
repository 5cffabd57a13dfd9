"""merge.method and merge.methods as evaluate and report read them (fusecli/plan.py)."""

import pytest
import yaml

from fusecli.errors import FusecliError
from fusecli.plan import MergeMethods, merge_methods


def write(tmp_path, merge):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"merge": merge}))
    return path


def test_default_and_methods_in_params_order(tmp_path):
    assert merge_methods(write(tmp_path, {"method": "ties", "methods": ["sce", "ties"]})) == MergeMethods(
        "ties", ("sce", "ties")
    )


@pytest.mark.parametrize(
    ("merge", "match"),
    [
        ({"method": "ties", "methods": ["sce"]}, "merge.method = 'ties' is not in merge.methods"),
        ({"method": "sce", "methods": ["sce", "sce"]}, "names a method twice"),
        ({"method": "sce", "methods": []}, "must be a non-empty list"),
        ({"methods": ["sce"]}, "merge.method = None must name a merge method"),
    ],
)
def test_bad_method_lists_fail_with_one_line(tmp_path, merge, match):
    with pytest.raises(FusecliError, match=match):
        merge_methods(write(tmp_path, merge))
