"""Stage 5: merge the pair-fused targets onto the pivot (SCE, VaRM and the baselines of method.md)."""

from fusecli.merge.params import MergeParams
from fusecli.merge.registry import get_method, method_names, register
from fusecli.merge.run import MergeResult, merge_models

__all__ = ["MergeParams", "MergeResult", "get_method", "merge_models", "method_names", "register"]
