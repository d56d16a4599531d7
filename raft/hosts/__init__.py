"""The hosts: what runs the node handler (layer 6, docs/design.md).

- `settings`: every app setting the Functions app reads, with its default;
- `functions`: what the Functions app's triggers call (`function_app.py` registers them);
- `http_api`: the HTTP API, framework-free, shared by the Functions app and the local server;
- `local_cluster`, `runner`, `http_server`, `client`: the local runner (`python -m raft run`).
"""
