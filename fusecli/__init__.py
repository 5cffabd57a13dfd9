"""fusecli: pairwise knowledge fusion of chat LLMs (FuseChat) as a content-hashed DVC pipeline."""
