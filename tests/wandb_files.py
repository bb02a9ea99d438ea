"""W&B's offline run files (``<run dir>/wandb/offline-run-*/run-<id>.wandb``) read back, for the
tests of what charlm logs to W&B."""

from __future__ import annotations

import json
import struct
from pathlib import Path

_BLOCK = 32768  # W&B's .wandb files use LevelDB's log format: 32 KiB blocks, 7-byte record headers
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list:
    """Decode a ``run-<id>.wandb`` file into ``wandb_internal_pb2.Record`` messages.

    wandb 0.31 no longer ships a Python reader (``wandb.sdk.internal.datastore`` is gone), so this
    follows the format it writes: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then
    LevelDB-log records (crc32 u32, length u16, type u8) in 32 KiB blocks, a record split across
    blocks as FIRST/MIDDLE/LAST pieces."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B datastore file"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            buf = chunk
        elif kind == _MIDDLE:
            buf += chunk
        elif kind == _LAST:
            out.append(buf + chunk)
            buf = b""
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def read_wandb_run(run_dir: Path) -> dict:
    """The offline W&B run under ``<run_dir>/wandb/offline-run-*``: ``name``, ``group``, ``tags``,
    ``config`` (dict), ``history`` (list of {key: value} rows), ``summary`` (dict), ``exit_code``
    and ``files_dir``."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline W&B run in {run_dir / 'wandb'}, found {runs}"
    (datastore,) = runs[0].glob("run-*.wandb")
    out = {"config": {}, "history": [], "summary": {}, "exit_code": None, "files_dir": runs[0] / "files"}
    for r in read_wandb_records(datastore):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(name=r.run.display_name, group=r.run.run_group, tags=list(r.run.tags))
        elif kind == "config":
            for item in r.config.update:
                key = item.key or "/".join(item.nested_key)
                out["config"][key] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in r.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out
