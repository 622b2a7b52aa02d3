"""A local HF model folder handled file by file: validated, copied or converted shard by shard, hashed.

Nothing here loads a whole model: a copy goes through the kernel (`copy_file_range`, a reflink where the
filesystem shares extents), a conversion holds one shard at a time, and the parameter count and dtype come
from the safetensors headers.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from stages.lib.common import UserError, sha256_file

# safetensors dtype names -> torch dtype names, for the floating types a conversion may change
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
CONVERT_HINT = (
    'convert it once where the memory is: `python -c "from transformers import AutoModelForCausalLM as M; '
    "M.from_pretrained('DIR').save_pretrained('DIR-safetensors')\"`, then point model.base at DIR-safetensors"
)


def weight_files(folder: Path) -> list[str]:
    """The folder's safetensors weight files (an index first, if any); a clear error for what is missing."""
    where = f"model.base: {folder}"
    if not (folder / "config.json").is_file():
        raise UserError(f"{where} has no config.json; an HF model folder holds config.json, *.safetensors, tokenizer")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{where} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if (folder / INDEX).is_file():
        weight_map = json.loads((folder / INDEX).read_text(encoding="utf-8")).get("weight_map") or {}
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if not shards or missing:
            raise UserError(
                f"{folder / INDEX}: names shard(s) that are missing: {', '.join(missing) or '(none named)'}"
            )
        return [INDEX, *shards]
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if shards:
        return shards
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")) or list(folder.glob("*.pth")):
        raise UserError(f"{where} holds only pickle weights (*.bin); loradag reads safetensors only: {CONVERT_HINT}")
    raise UserError(f"{where} has no weights (*.safetensors)")


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), read without touching the tensors."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header


def summarize(folder: Path, shards: list[str]) -> tuple[int, Counter[str]]:
    """(parameter count, bytes per torch dtype name) over the weight files' headers."""
    parameters, dtype_bytes = 0, Counter[str]()
    for shard in shards:
        if shard == INDEX:
            continue
        for info in read_header(folder / shard).values():
            numel = 1
            for dim in info["shape"]:
                numel *= dim
            parameters += numel
            start, end = info["data_offsets"]
            dtype_bytes[FLOAT_DTYPES.get(info["dtype"], info["dtype"])] += end - start
    return parameters, dtype_bytes


def float_dtypes(dtype_bytes: Counter[str]) -> set[str]:
    return {d for d in dtype_bytes if d in FLOAT_DTYPES.values()}


def copy_file(src: Path, dst: Path) -> None:
    """Copy in the kernel: copy_file_range shares extents on btrfs/XFS (a reflink), else copies bytes."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        remaining = os.fstat(fin.fileno()).st_size
        try:
            while remaining > 0:
                sent = os.copy_file_range(fin.fileno(), fout.fileno(), remaining)
                if sent == 0:
                    break
                remaining -= sent
            return
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
    shutil.copyfile(src, dst)  # a filesystem without copy_file_range: sendfile, still no user-space buffer


def convert_shard(src: Path, dst: Path, dtype: str) -> None:
    """Rewrite one safetensors file with its floating tensors in `dtype`; holds this one shard in memory."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    target = getattr(torch, dtype)
    tensors = {}
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata() or {}
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            tensor = f.get_tensor(name)
            tensors[name] = tensor.to(target) if tensor.is_floating_point() else tensor
    save_file(tensors, str(dst), metadata={**metadata, "format": "pt"})


def write_weights(src: Path, dst: Path, shards: list[str], dtype: str | None) -> None:
    """Copy the weight files into `dst`, converting each shard to `dtype` if given (the index gets new sizes)."""
    for shard in shards:
        if dtype is None:
            copy_file(src / shard, dst / shard)
        elif shard != INDEX:
            convert_shard(src / shard, dst / shard, dtype)
    if dtype is not None and INDEX in shards:
        index = json.loads((src / INDEX).read_text(encoding="utf-8"))
        total = sum((dst / s).stat().st_size - 8 - _header_length(dst / s) for s in shards if s != INDEX)
        index["metadata"] = {**index.get("metadata", {}), "total_size": total}
        (dst / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _header_length(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def write_config(src: Path, dst: Path, dtype: str) -> None:
    """config.json as is, unless its dtype entry disagrees with the weights written (then that one key)."""
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
    if config.get(key) == dtype:
        copy_file(src / "config.json", dst / "config.json")
        return
    config[key] = dtype
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def manifest(folder: Path, hashes: bool = True) -> dict[str, dict[str, Any]]:
    """{file name: {bytes, sha256}} for every file in `folder`, each file read once (sizes only without `hashes`)."""
    records = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        record: dict[str, Any] = {"bytes": path.stat().st_size}
        if hashes:
            record["sha256"] = sha256_file(path)
        records[path.relative_to(folder).as_posix()] = record
    return records
