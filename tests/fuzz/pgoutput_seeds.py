#!/usr/bin/env python3
"""Writes seed inputs for pgoutput_fuzzer into the folder given: one byte choosing column types,
then a pgoutput message as the PostgreSQL documentation lays it out (Begin, Relation, Insert,
Update with an old key and an unchanged TOASTed column, Delete, Truncate, Commit, keepalive)."""
import os
import struct
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)


def text(v):
    b = v.encode()
    return b"t" + struct.pack(">I", len(b)) + b


def tup(*cols):
    return struct.pack(">H", len(cols)) + b"".join(cols)


seeds = {
    "begin": b"B" + struct.pack(">QqI", 0x1A2B3C4D, 1000000, 742),
    "relation": b"R" + struct.pack(">I", 16384) + b"public\0orders\0d" + struct.pack(">H", 2)
    + b"\x01id\0" + struct.pack(">Ii", 20, -1) + b"\x00ts\0" + struct.pack(">Ii", 1184, -1),
    "insert": b"I" + struct.pack(">I", 16384) + b"N"
    + tup(text("7"), text("2024-02-29 13:45:30.123456+00"), text("\\xdeadbeef"), text("13:45:30.5")),
    "update": b"U" + struct.pack(">I", 16384) + b"K" + tup(text("7"), b"n") + b"N"
    + tup(text("8"), b"u", text("1970-01-01"), text("2024-02-29 13:45:30")),
    "delete": b"D" + struct.pack(">I", 16384) + b"K" + tup(text("8"), b"n", b"n"),
    "truncate": b"T" + struct.pack(">IB", 2, 1) + struct.pack(">II", 16384, 16390),
    "commit": b"C\0" + struct.pack(">QQq", 0x1A2B3C4D, 0x1A2B3C7F, 1000000),
    "keepalive": b"k" + struct.pack(">QqB", 0x10, 5, 1),
    "xlogdata": b"w" + struct.pack(">QQq", 0x20, 0x30, 0) + b"B" + struct.pack(">QqI", 1, 2, 3),
}
for i, (name, message) in enumerate(seeds.items()):
    with open(os.path.join(out, f"seed-{name}"), "wb") as f:
        f.write(bytes([i]) + message)
