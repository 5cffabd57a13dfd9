"""The report: the paper's comparisons side by side, as Markdown with PNG plots."""
