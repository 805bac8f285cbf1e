"""One thin entry module per DVC stage: parse arguments and params, call dgl/, write outputs."""
