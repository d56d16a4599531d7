"""A deterministic, Coyote-style systematic tester for the Raft server.

One process, virtual time, and every nondeterministic choice (which message or timer fires
next, faults, which function instance handles an event, what clients ask) made by a strategy
from one seed and recorded, so a failing schedule replays exactly and can be shrunk.
The production core and node handler run unchanged; see docs/tester.md.
"""
