"""Coverage-guided fuzzing of the parsers with atheris (libFuzzer), the opt-in complement to
the hypothesis fuzz tests: atheris watches which branches of the parser, the wire decoder,
`receive` and the application's validation an input reaches, and keeps mutating the inputs
that reach new ones. Not a pytest module; `scripts/fuzz-coverage` installs atheris and runs

    .venv/bin/python -m tests.coverage_fuzz CORPUS_DIR -runs=N -max_total_time=S

Each input's first byte picks the target, the rest is the input. Only the documented
outcomes may follow (docs/bad-input.md); anything else is a crash libFuzzer reports and saves.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from raft.adapters.poison import TablePoisonRecorder
    from raft.adapters.servicebus_bus import receive
    from raft.adapters.table_rows import check_entity
    from raft.app.kv import KeyValueStore, encode, parse_command
    from raft.app.state_machine import CommandError
    from raft.core import strict_json, wire
    from raft.core.messages import AppendEntries, ClientRequest, Entry, Envelope, RequestVote


class Delivery:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.application_properties = {"addressee": "server-2"}
        self.message_id = "fuzz"
        self.delivery_count = 1

    def get_body(self) -> bytes:
        return self.body


class Table:
    def create_entity(self, entity: dict[str, Any]) -> None:
        check_entity(entity, "poison")


def decode(data: bytes) -> None:
    try:
        envelope = wire.decode(data)
    except wire.WireError:
        return
    assert wire.decode(wire.encode(envelope)) == envelope


def deliver(data: bytes) -> None:
    receive(Delivery(data), TablePoisonRecorder(Table()), server_id="server-2")


def validate(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    machine = KeyValueStore()
    try:
        machine.validate(text)
    except CommandError:
        return
    assert "error" not in json.loads(machine.apply(text))
    machine.validate(encode(parse_command(text)))


def parse(data: bytes) -> None:
    try:
        strict_json.loads(data)
    except strict_json.JsonInputError:
        return


TARGETS = [decode, deliver, validate, parse]


def test_one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


def seed(corpus: Path) -> None:
    """Valid inputs for every target, for the fuzzer to start from."""
    corpus.mkdir(parents=True, exist_ok=True)
    put = json.dumps({"op": "put", "key": "k", "value": {"a": [1, 2.5, None, "\U0001f600"]}})
    entry = Entry(3, "c", 1, put)
    envelopes = [
        Envelope("server-1", "server-2", RequestVote(3, "server-1", 4, 2, True)),
        Envelope("server-1", "server-2", AppendEntries(3, "server-1", 4, 2, (entry,), 4)),
        Envelope("c", "server-2", ClientRequest("c", 1, put, "c")),
    ]
    for i, envelope in enumerate(envelopes):
        raw = wire.encode(envelope).encode()
        for target in (decode, deliver):
            (corpus / f"{target.__name__}-{i}").write_bytes(bytes([TARGETS.index(target)]) + raw)
    for target in (validate, parse):
        (corpus / f"{target.__name__}").write_bytes(bytes([TARGETS.index(target)]) + put.encode())


def main() -> None:
    logging.disable(logging.CRITICAL)  # every poison record logs a line; libFuzzer reports
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not corpus.exists():
        seed(corpus)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
