"""Hosts that run the node handler: the local runner (and its HTTP server), the Functions app
lives at the top level in function_app.py (DESIGN.md layer 6)."""
