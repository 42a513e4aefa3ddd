"""Reads what an offline W&B run wrote, for the tests: WORKDIR/wandb/offline-run-*/.

wandb >= 0.2x no longer ships a reader for its `run-<id>.wandb` files, which are
LevelDB-style logs of protobuf `Record`s (wandb.proto.wandb_internal_pb2): a 7-byte
W&B header, then 32 KiB blocks of chunks, each `crc32 (4) | length (2, little endian)
| type (1: whole, 2: first, 3: middle, 4: last) | data`.
"""

import glob
import json
import os

_BLOCK = 32768
_HEADER = 7


def _records(path: str):
  from wandb.proto import wandb_internal_pb2
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B", f"{path} is not a W&B run file"
  pos, parts = _HEADER, b""
  while pos + _HEADER <= len(data):
    left = _BLOCK - pos % _BLOCK
    if left < _HEADER:  # A block's tail too short for a chunk header is padding.
      pos += left
      continue
    length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
    parts += data[pos + _HEADER:pos + _HEADER + length]
    pos += _HEADER + length
    if kind in (1, 4):
      record = wandb_internal_pb2.Record()
      record.ParseFromString(parts)
      parts = b""
      yield record


def offline_env(folder) -> dict[str, str]:
  """Environment for offline W&B runs, its settings and caches kept in `folder`
  rather than the home folder."""
  return {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
          **{f"WANDB_{k}_DIR": os.path.join(str(folder), f"wandb_{k.lower()}")
             for k in ("CONFIG", "CACHE", "DATA")}}


def _key(item) -> str:
  return item.key or "/".join(item.nested_key)


def offline_runs(workdir) -> list[dict]:
  """One dict per session folder, oldest first: {"id", "name", "group", "tags",
  "config" (top-level keys, values decoded), "summary", "history" (rows)}."""
  runs = []
  pattern = os.path.join(str(workdir), "wandb", "offline-run-*", "run-*.wandb")
  for path in sorted(glob.glob(pattern)):
    run = {"config": {}, "summary": {}, "history": []}
    for record in _records(path):
      kind = record.WhichOneof("record_type")
      if kind == "run":
        run.update(id=record.run.run_id, name=record.run.display_name,
                   group=record.run.run_group, tags=list(record.run.tags))
        updates = record.run.config.update
      elif kind == "config":
        updates = record.config.update
      elif kind == "summary":
        run["summary"].update({_key(u): json.loads(u.value_json)
                               for u in record.summary.update if _key(u)})
        continue
      elif kind == "history":
        run["history"].append({_key(i): json.loads(i.value_json)
                               for i in record.history.item})
        continue
      else:
        continue
      for u in updates:
        value = json.loads(u.value_json)
        # W&B keeps each config value as {"value": ..., "desc": ...}.
        run["config"][_key(u)] = (value["value"] if isinstance(value, dict)
                                  and "value" in value else value)
    runs.append(run)
  return runs
