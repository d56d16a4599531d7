"""Benchmarks: the in-process cluster against PySyncObj, the adapters' message and write
counts that price the cluster on Azure, an Azure cost model, overload and simulator speed.

`python -m raft bench` (or `python -m bench`) runs them all; docs/performance.md has the
latest figures. This package is not part of the Functions app (see .funcignore), and nothing
under `raft/` imports it: it plugs into `python -m raft` through an entry point.
"""
