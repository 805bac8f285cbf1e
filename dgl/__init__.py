"""DGL: dynamic global-local prompt tuning for text-video retrieval on a frozen CLIP."""

# Marks this package as this project's `dgl`: the Deep Graph Library installs a package of the same
# import name, and pipelines/__init__.py checks this marker before any stage imports from dgl.
PROMPT_TUNING = True
