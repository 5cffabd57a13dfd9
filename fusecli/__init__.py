"""fusecli: pairwise knowledge fusion of chat LLMs (FuseChat) as a content-hashed DVC pipeline."""

__version__ = "0.1.0"
