"""Benchmarks: the in-process cluster against PySyncObj, the adapters' message and write
counts that price the cluster on Azure, an Azure cost model, overload and simulator speed.

`python -m raft bench` (or `python -m raft.bench`) runs them all; the README's "Performance"
section has the latest figures.
"""
