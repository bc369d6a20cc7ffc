"""``torchrun --nproc_per_node 2 -m ppr train``: two CPU processes (gloo) train one network.

Both ranks hold the same weights after every step (``--check-sync`` hashes), rank 0 alone writes the
checkpoint, the training log (world_size 2) and the bundle (an audit hook records what each rank
writes), the bundle detects, and a run resumed under torchrun ends where the uninterrupted one ends.
Tiny settings: two dev scans and one validation scan on a 64^3 grid at 4 mm, m = 2, 8^3 crops, 4 steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

TRAIN = ("ctich_054", "ctich_056")
VALIDATION = ("ctich_057",)
STEPS = 4
TINY = ["--size", "64", "--spacing", "4", "--prewindowed", "--width", "2", "--crop", "8", "--crops", "1",
        "--val-every", "2", "--device", "cpu", "--seed", "3", "--check-sync", "--json"]

# Loaded in every process of the run (PYTHONPATH): in the ranks, an audit hook notes every path opened
# for writing, created, renamed or removed, and writes the list to PPR_TEST_WRITES/rank<R>.json at exit.
SITECUSTOMIZE = textwrap.dedent('''
    import atexit, json, os, sys
    _log_dir, _rank = os.environ.get("PPR_TEST_WRITES"), os.environ.get("RANK")
    if _log_dir and _rank is not None:
        _written, _busy = set(), [False]
        _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def _path(value):
            return os.path.abspath(os.fsdecode(value)) if isinstance(value, (str, bytes, os.PathLike)) else None

        def _hook(event, args):
            if _busy[0]:
                return
            paths = []
            if event == "open" and args and (
                    (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
                    or (args[1] is None and isinstance(args[2], int) and args[2] & _WRITE_FLAGS)):
                paths = [args[0]]
            elif event in ("os.rename", "os.link", "os.symlink"):
                paths = list(args[:2])
            elif event in ("os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "shutil.move", "shutil.copyfile"):
                paths = list(args[:2]) if event in ("shutil.move", "shutil.copyfile") else [args[0]]
            for value in paths:
                path = _path(value)
                if path is not None:
                    _written.add(path)

        def _save():
            _busy[0] = True
            with open(os.path.join(_log_dir, f"rank{_rank}.json"), "w") as handle:
                json.dump(sorted(_written), handle)

        sys.addaudithook(_hook)
        atexit.register(_save)
''')


def _torchrun(args: list[str], root: Path, repo_root: Path) -> subprocess.CompletedProcess:
    hooks = root / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    writes = root / "writes"
    shutil.rmtree(writes, ignore_errors=True)
    writes.mkdir()
    env = dict(os.environ, PPR_TEST_WRITES=str(writes),
               PYTHONPATH=os.pathsep.join([str(hooks), str(repo_root / "PositionRegressionAD"),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("PPR_PARENT_PID", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ppr", "train", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=root, env=env, timeout=300)


def _train_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [*(data / f"{c}.nii.gz" for c in TRAIN), "--val", *(data / f"{c}.nii.gz" for c in VALIDATION),
            "--out", out, "--steps", str(steps), *TINY, *extra]


def _sync_lines(cache: Path) -> tuple[list[str], list[str]]:
    return tuple((cache / "check-sync" / f"rank{r}.txt").read_text().splitlines() for r in (0, 1))


def _digest(state: dict[str, torch.Tensor]) -> str:
    """``ppr.networks.distributed.weights_digest`` of a state dict, written out here."""
    digest = hashlib.sha256()
    for name, value in state.items():
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, dev_data_dir, repo_root):
    root = tmp_path_factory.mktemp("ddp")
    completed = _torchrun(_train_args(dev_data_dir, root / "model", STEPS), root, repo_root)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-6000:]
    return root, completed


@pytest.mark.slow
def test_two_ranks_keep_the_same_weights_and_rank_0_alone_writes(straight, dev_data_dir, repo_root):
    root, completed = straight
    cache, bundle = root / "model.cache", root / "model"
    rank0, rank1 = _sync_lines(cache)
    assert [line.split()[0] for line in rank0] == [str(step) for step in range(STEPS + 1)]
    assert rank0 == rank1  # the same weights on both ranks before training and after every step
    assert len({line.split()[1] for line in rank0}) == STEPS + 1  # and every step changed them
    checkpoint = torch.load(cache / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert rank0[-1].split()[1] == _digest(checkpoint["network"])
    assert checkpoint["world_size"] == 2 and len(checkpoint["rank_rngs"]) == 2
    assert checkpoint["rank_rngs"][0] != checkpoint["rank_rngs"][1]  # each rank drew its own patches

    log = json.loads((bundle / "training_log.json").read_text())
    assert log["world_size"] == 2
    assert [r["step"] for r in log["steps"]] == list(range(1, STEPS + 1))
    assert [r["step"] for r in log["steps"] if r.get("val_loss") is not None] == [2, 4]
    info = json.loads((bundle / "config.json").read_text())
    assert info["training"]["world_size"] == 2 and info["training"]["steps"] == STEPS

    # One report, from rank 0; each scan was preprocessed once (the ranks shared the work).
    reports = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["world_size"] == 2 and reports[0]["steps"] == STEPS
    assert len(list((cache / "volumes").glob("*.npz"))) == len(TRAIN) + len(VALIDATION)

    written = {r: [Path(p) for p in json.loads((root / "writes" / f"rank{r}.json").read_text())] for r in (0, 1)}
    mine = [p for p in written[1] if root in p.parents]
    assert mine, "the audit hook saw nothing of rank 1 (its check-sync file at least)"
    allowed = (cache / "volumes", cache / "check-sync")
    assert [p for p in mine if not any(a == p or a in p.parents for a in allowed)] == []
    # The hook does see the bundle, the log and the checkpoint being written (by rank 0).
    assert bundle in written[0] and cache / "training_log.json" in written[0] and cache / "checkpoint.pt" in written[0]

    out = root / "error.nii.gz"
    detect = subprocess.run([sys.executable, "-m", "ppr", "detect", str(dev_data_dir / "ctich_051.nii.gz"),
                             "--model", str(bundle), "--out", str(out), "--stride", "4", "--device", "cpu"],
                            capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert detect.returncode == 0, detect.stderr[-3000:]
    assert out.is_file()


@pytest.mark.slow
def test_a_run_resumed_under_torchrun_ends_where_the_straight_run_ends(straight, dev_data_dir, repo_root,
                                                                       tmp_path):
    straight_root, _ = straight
    shutil.copytree(straight_root / "model.cache" / "volumes", tmp_path / "model.cache" / "volumes")
    first = _torchrun(_train_args(dev_data_dir, tmp_path / "model", 2), tmp_path, repo_root)
    assert first.returncode == 0, first.stderr[-6000:]
    resumed = _torchrun(_train_args(dev_data_dir, tmp_path / "model", STEPS, "--resume", "--progress"),
                        tmp_path, repo_root)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert "resumed at step 2" in resumed.stderr
    rank0, rank1 = _sync_lines(tmp_path / "model.cache")
    assert rank0 == rank1 and [line.split()[0] for line in rank0] == ["2", "3", "4"]
    straight0, _ = _sync_lines(straight_root / "model.cache")
    assert rank0 == straight0[2:]  # the same weights after steps 2, 3 and 4 as without the interruption
    log = json.loads((tmp_path / "model" / "training_log.json").read_text())
    expected = json.loads((straight_root / "model" / "training_log.json").read_text())
    assert log["world_size"] == 2
    assert np.allclose([r["loss"] for r in log["steps"]], [r["loss"] for r in expected["steps"]], atol=1e-6)


def test_each_rank_draws_its_own_stream_and_rank_0_draws_the_single_process_one():
    from ppr.networks.training import _rank_rng

    single = np.random.default_rng(5).integers(0, 2**31, 8)
    assert np.array_equal(_rank_rng(5, 0).integers(0, 2**31, 8), single)
    streams = [tuple(_rank_rng(5, rank).integers(0, 2**31, 8)) for rank in range(4)]
    assert len(set(streams)) == 4


def test_a_single_process_is_rank_0_of_1_and_its_helpers_do_nothing(monkeypatch):
    from ppr.networks import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session("cpu") as dist:
        assert (dist.rank, dist.world_size, dist.enabled, dist.is_main) == (0, 1, False, True)
        net = torch.nn.Linear(2, 2)
        assert dist.wrap(net, torch.device("cpu")) is net
        assert dist.sum([1.5, 2]) == [1.5, 2.0] and dist.broadcast("x") == "x" and dist.gather(3) == [3]
        dist.barrier()
    assert not torch.distributed.is_initialized()
