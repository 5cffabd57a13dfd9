"""Importing this package registers every merge method (one module each)."""

from fusecli.merge.methods import dare, linear, sce, task_arithmetic, ties, varm

__all__ = ["dare", "linear", "sce", "task_arithmetic", "ties", "varm"]
