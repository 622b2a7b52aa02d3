"""Sharing and comparing through real DVC on a tiny model: remotes (local folder, loopback S3), clone + pull,
`dvc get`, metrics/params/plots diff between commits, and a queued experiment sweep."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from project import QUICK_PARAMS, Project, copy_project

from stages.lib.params import STAGES

# Fake credentials: they must reach DVC through the environment only, never through a config file.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "loradag-test-key-id", "AWS_SECRET_ACCESS_KEY": "loradag-test-secret-key"}


def ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def dvc_stdout(project: Project, *args: str) -> str:
    """stdout alone (warnings go to stderr), for --json and --csv output."""
    return project.run(sys.executable, "-m", "dvc", *args).stdout


def clone(origin: Project, name: str) -> Project:
    """`git clone` of origin beside it: the committed `../../loradag-remote` resolves to the same folder."""
    dest = origin.root.parent / name
    origin.run("git", "clone", "-q", str(origin.root), str(dest))
    return Project(dest)


def output_files(project: Project) -> dict[str, bytes]:
    """Every file of every stage output recorded in dvc.lock, relative path -> bytes."""
    lock = yaml.safe_load(project.read("dvc.lock"))
    files = {}
    for stage in lock["stages"].values():
        for out in stage["outs"]:
            path = project.root / out["path"]
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    files[file.relative_to(project.root).as_posix()] = file.read_bytes()
    return files


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Project:
    """The whole DAG run once on the tiny model, committed with its dvc.lock and pushed to the default remote."""
    params = {**QUICK_PARAMS, "train.max_steps": 2, "model.base": str(tiny_model_dir)}
    project = copy_project(tmp_path_factory.mktemp("share") / "loradag", params)
    assert ran(project.dvc("repro")) == list(STAGES)
    project.commit("run the pipeline")
    assert "files pushed" in project.dvc("push")
    return project


@pytest.fixture(scope="module")
def sweeper(origin: Project) -> Project:
    """A clone of origin that ran a queued two-experiment sweep: `r4` (rank 4) and `r8-slow` (rank 8, lr 1e-4)."""
    project = clone(origin, "sweeper")
    project.dvc("pull")
    project.dvc("exp", "run", "--queue", "-n", "r4", "-S", "train.lora.r=4")
    project.dvc("exp", "run", "--queue", "-n", "r8-slow", "-S", "train.lora.r=8", "-S", "train.learning_rate=1e-4")
    out = project.dvc("exp", "run", "--run-all")
    assert "Ran experiment(s)" in out, out
    return project


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol server (moto) on loopback, with an empty bucket `loradag`."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).create_bucket(Bucket="loradag")
    yield endpoint
    server.stop()


@pytest.fixture
def s3_env(tmp_path: Path) -> dict[str, str]:
    """The credentials, and empty AWS config files so no profile of the machine running the tests leaks in."""
    empty = tmp_path / "aws-empty"
    empty.write_text("")
    return {
        **S3_KEYS,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
    }


@pytest.mark.slow
def test_fresh_clone_pulls_every_output_from_the_default_remote_and_repro_is_a_noop(origin: Project) -> None:
    assert (origin.root.parent / "loradag-remote").is_dir()  # `../../loradag-remote`: a folder beside the repo
    teammate = clone(origin, "teammate")
    assert not (teammate.root / "models/base").exists()

    assert "files fetched" in teammate.dvc("pull")  # no remote configured by hand: the committed default

    pulled, produced = output_files(teammate), output_files(origin)
    assert pulled.keys() == produced.keys()
    for path in (
        "models/base/model.safetensors",
        "models/adapter/adapter_model.safetensors",
        "data/split/train.parquet",
        "data/split/eval.parquet",
        "metrics/evaluate.json",
    ):
        assert path in pulled
    assert pulled == produced  # byte for byte
    assert "Data and pipelines are up to date." in teammate.dvc("status")
    assert ran(teammate.dvc("repro")) == []  # nothing retrains
    assert teammate.run("git", "status", "--porcelain").stdout == ""  # dvc.lock as committed


@pytest.mark.slow
def test_dvc_get_fetches_one_adapter_and_one_dataset_from_another_clone(origin: Project, tmp_path: Path) -> None:
    elsewhere = Project(tmp_path)  # not a DVC repo: just a folder to download into
    elsewhere.env["DVC_NO_ANALYTICS"] = "1"
    rev = origin.run("git", "rev-parse", "HEAD").stdout.strip()
    elsewhere.dvc("get", str(origin.root), "models/adapter", "--rev", rev, "-o", "adapter")
    elsewhere.dvc("get", str(origin.root), "data/split/train.parquet", "--rev", "main")

    for got, source in (
        ("adapter/adapter_model.safetensors", "models/adapter/adapter_model.safetensors"),
        ("train.parquet", "data/split/train.parquet"),
    ):
        assert (tmp_path / got).read_bytes() == (origin.root / source).read_bytes()


@pytest.mark.slow
def test_s3_remote_with_credentials_from_the_environment_round_trips(
    origin: Project, s3_endpoint: str, s3_env: dict[str, str]
) -> None:
    import boto3

    uploader = clone(origin, "s3-uploader")
    uploader.dvc("pull")  # from the local remote; the S3 bucket starts empty
    uploader.env |= s3_env
    uploader.dvc("remote", "add", "-d", "s3", "s3://loradag/cache")
    uploader.dvc("remote", "modify", "s3", "endpointurl", s3_endpoint)
    assert "files pushed" in uploader.dvc("push")
    uploader.commit("default remote: S3")

    local = uploader.root / ".dvc/config.local"
    config = uploader.read(".dvc/config") + (local.read_text() if local.exists() else "")
    assert "s3://loradag/cache" in config and s3_endpoint in config
    assert not any(secret in config for secret in S3_KEYS.values())
    bucket = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    ).list_objects_v2(Bucket="loradag")
    assert bucket["KeyCount"] > 0 and all(obj["Key"].startswith("cache/files/md5/") for obj in bucket["Contents"])

    downloader = clone(uploader, "s3-downloader")
    downloader.env |= s3_env
    assert "files fetched" in downloader.dvc("pull")  # the committed default remote is now S3
    assert output_files(downloader) == output_files(origin)
    assert ran(downloader.dvc("repro")) == []


@pytest.mark.slow
def test_queued_sweep_keeps_each_experiment_outputs_and_exp_show_lists_them(sweeper: Project) -> None:
    columns = "Experiment|decision.verdict|delta.token_f1|eval_loss|train.lora.r|train.learning_rate"
    table = dvc_stdout(sweeper, "exp", "show", "--csv", "--drop", ".*", "--keep", columns)
    rows = {row["Experiment"]: row for row in csv.DictReader(io.StringIO(table)) if row["Experiment"]}
    assert rows.keys() == {"r4", "r8-slow"}
    assert {row["decision.verdict"] for row in rows.values()} <= {"keep", "discard", "inconclusive"}
    assert all(row["delta.token_f1"] for row in rows.values())
    assert (rows["r4"]["train.lora.r"], rows["r8-slow"]["train.lora.r"]) == ("4", "8")
    assert rows["r4"]["eval_loss"] != rows["r8-slow"]["eval_loss"]
    assert float(rows["r8-slow"]["train.learning_rate"]) == 1e-4

    for name, rank in (("r4", 4), ("r8-slow", 8)):  # each experiment's adapter is kept, not overwritten
        sweeper.dvc("exp", "apply", name)
        assert json.loads(sweeper.read("models/adapter/adapter_config.json"))["r"] == rank
    sweeper.run("git", "checkout", "--", ".")
    sweeper.dvc("checkout")
    assert json.loads(sweeper.read("models/adapter/adapter_config.json"))["r"] == 16


@pytest.mark.slow
def test_metrics_params_and_plots_diff_between_two_commits_that_differ_in_the_rank(sweeper: Project) -> None:
    sweeper.dvc("exp", "branch", "r4", "rank-4")  # the experiment as a commit on a branch: one param differs

    metrics = json.loads(dvc_stdout(sweeper, "metrics", "diff", "main", "rank-4", "--all", "--json"))
    for name in ("validate", "split", "train", "evaluate"):
        assert f"metrics/{name}.json" in metrics
    assert metrics["metrics/train.json"]["eval_loss"]["diff"] != 0
    assert {"decision.verdict", "delta.token_f1"} <= metrics["metrics/evaluate.json"].keys()
    targets = ("--targets", "metrics/all/train.json")  # every number of train, not only the compared ones
    every = json.loads(dvc_stdout(sweeper, "metrics", "diff", "main", "rank-4", "--all", "--json", *targets))
    trainable = every["metrics/all/train.json"]["trainable_params"]
    assert (trainable["old"], trainable["new"]) == (32768, 8192)  # LoRA params scale with r: 2048 * r here
    assert metrics["metrics/split.json"]["train"]["diff"] == 0  # same data on both sides

    params = json.loads(dvc_stdout(sweeper, "params", "diff", "main", "rank-4", "--json"))
    assert params == {"params.yaml": {"train.lora.r": {"old": 16, "new": 4, "diff": -12}}}

    plots = json.loads(dvc_stdout(sweeper, "plots", "diff", "main", "rank-4", "--json"))["data"]
    for name in ("loss", "judge_scores", "pairs_per_source", "intervals"):
        assert plots[name][0]["revisions"] == ["main", "rank-4"]
        assert {row["rev"] for row in plots[name][0]["content"]["data"]["values"]} == {"main", "rank-4"}
