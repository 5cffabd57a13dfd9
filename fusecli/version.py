"""The fusecli version, in a module of its own: only what records it (merge_report.json) reruns when it changes."""

__version__ = "0.1.0"
