"""Data layer: sources → FeatureSpec + memory-mapped cache → TorchRec batches.

readers/   one file per source behind the `Reader` protocol (readers/base.py)
vocab.py   train-split token counting and id assignment
cache.py   build_or_load(reader, ...) -> CachedDataset (two streamed passes, atomic)
batches.py iterate_batches / num_batches (single process or one rank of many)
config.py  DataConfig (the [data] section) and load_dataset(cfg)
"""
