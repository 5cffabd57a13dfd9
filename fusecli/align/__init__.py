"""Stage 3: align a source's top-K distributions onto the pivot's tokens (docs/method.md, "Stage 3").

tokens.py: token strings and token alignment (MinED dynamic programming, or character offsets);
vocab.py: the source -> pivot vocabulary map; dist.py: per-position distribution alignment;
run.py: the stage (two passes over the extract stores); inspect.py: the `inspect-alignment` command.
"""
