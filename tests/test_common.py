"""Typed params configs, atomic writes and ids: the conventions every stage relies on."""

import errno
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl
import pytest

from stages.lib.common import UserError, atomic_dir, atomic_path, stable_id, write_json
from stages.lib.params import ConfigError, from_dict, load_params, require


@dataclass(frozen=True)
class Inner:
    r: int = 16
    modules: list[str] | str = "all-linear"


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"
    flag: bool = False
    maybe: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        require(0 < self.rate < 1, "outer.rate", f"must be in (0, 1), got {self.rate}")


def test_defaults_fill_missing_keys() -> None:
    assert from_dict(Outer, {}, "outer") == Outer()


def test_nested_values_and_unions_are_typed() -> None:
    cfg = from_dict(Outer, {"rate": "2e-1", "inner": {"r": 8, "modules": ["q_proj"]}, "maybe": None}, "outer")
    assert cfg.rate == 0.2 and cfg.inner.r == 8 and cfg.inner.modules == ["q_proj"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nmae": "y"}, "outer.nmae is not a known key"),
        ({"inner": {"rank": 4}}, "outer.inner.rank is not a known key"),
        ({"rate": "fast"}, "outer.rate must be a number"),
        ({"rate": 1.5}, "outer.rate must be in (0, 1), got 1.5"),
        ({"mode": "c"}, "outer.mode must be one of a, b"),
        ({"flag": "yes"}, "outer.flag must be true or false"),
        ({"inner": {"r": 2.5}}, "outer.inner.r must be an integer"),
        ({"inner": {"r": True}}, "outer.inner.r must be an integer"),
        ({"inner": {"modules": [1]}}, "outer.inner.modules[0] must be a string"),
        ({"inner": "big"}, "outer.inner must be a mapping"),
    ],
)
def test_bad_params_name_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, raw, "outer")
    assert message in str(err.value)


def test_load_params_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="params.yaml: not valid YAML"):
        load_params(bad)


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-written")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_stable_id_depends_on_every_part() -> None:
    assert stable_id("a.md", 0, "text") == stable_id("a.md", 0, "text")
    assert len({stable_id("a.md", 0, "text"), stable_id("a.md", 1, "text"), stable_id("b.md", 0, "text")}) == 3


def test_atomic_outputs_get_umask_permissions_not_0600(tmp_path: Path) -> None:
    import os

    from stages.lib.common import atomic_dir

    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "m.json")
        with atomic_dir(tmp_path / "adapter") as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o755


def test_read_table_says_which_stage_to_run(tmp_path: Path) -> None:
    import polars as pl

    from stages.lib.common import read_table

    path = tmp_path / "pairs.parquet"
    with pytest.raises(UserError, match=r"pairs\.parquet: not found; run `loradag generate`"):
        read_table(path, "generate", ["question"])
    pl.DataFrame({"question": ["Q?"]}).write_parquet(path)
    with pytest.raises(UserError, match=r"lacks column\(s\) answer; rerun `loradag generate`"):
        read_table(path, "generate", ["question", "answer"])
    assert read_table(path, "generate", ["question"])["question"].to_list() == ["Q?"]
    pl.DataFrame({"question": []}, schema={"question": pl.String}).write_parquet(path)
    with pytest.raises(UserError, match="holds no rows; check `loradag generate` and metrics/generate.json"):
        read_table(path, "generate", ["question"])


def test_an_unknown_params_section_is_named_not_ignored(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("splt:\n  seed: 7\n", encoding="utf-8")  # a typo would leave split on its defaults
    with pytest.raises(ConfigError, match=r"unknown section 'splt' \(known: model, extract, generate"):
        load_params(path)


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed mid-save")
    assert (target / "weights").read_text() == "old"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"] and (target / "weights").read_text() == "new"


def test_temporaries_a_killed_run_left_are_removed_by_the_next_write(tmp_path: Path) -> None:
    (tmp_path / ".adapter.loradag-x1.tmp").mkdir()  # what SIGKILL leaves: the finally blocks never ran
    (tmp_path / ".out.json.loradag-y2.tmp").write_text("half")
    (tmp_path / ".out.json.other.tmp").write_text("not ours")
    with atomic_dir(tmp_path / "adapter") as tmp:
        (tmp / "weights").write_text("new")
    write_json({"a": 1}, tmp_path / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.json.other.tmp", "adapter", "out.json"]


def test_a_full_disk_is_an_oserror_naming_the_file_and_the_old_file_stays(tmp_path: Path) -> None:
    """A real write failure: a file-size limit (EFBIG) in a child process, as a full disk (ENOSPC) would fail."""
    target = tmp_path / "records.parquet"
    code = f"""
import resource, polars as pl
from stages.lib.common import write_parquet
write_parquet(pl.DataFrame({{"a": [1]}}), {str(target)!r})
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    write_parquet(pl.DataFrame({{"text": [str(i) * 50 for i in range(20_000)]}}), {str(target)!r})
except OSError as err:
    print(err.errno, err.filename)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(errno.EFBIG), str(target)]
    assert pl.read_parquet(target)["a"].to_list() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["records.parquet"]
