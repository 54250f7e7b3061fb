"""Data layer: sources → FeatureSpec + memory-mapped cache → TorchRec batches.

readers/   one file per source behind the `Reader` protocol (readers/base.py), plus
           readers/encoded.py (the configured numerical encodings, for any source)
vocab.py   train-split token counting and id assignment
fitting.py quantile edges / mean and std of numerical fields, fitted on the train split
numerical.py vectorised twins of the token rules in serving/encodings.py
cache.py   build_or_load(reader, ...) -> CachedDataset (two streamed passes, atomic)
batches.py iterate_batches / num_batches (single process or one rank of many)
config.py  DataConfig (the [data] section) and load_dataset(cfg)
"""
