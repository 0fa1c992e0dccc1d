"""Two "nodes" of two processes each on this machine, launched as on two machines without
cluster tooling: one ``distill fit`` per node, with Lightning's environment variables
(``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``, ``WORLD_SIZE``), and Lightning starting each
node's second process itself (gloo)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_png_folder
from tests_support import free_port

ROOT = Path(__file__).resolve().parents[2]

#: MoCo (an EMA key encoder and a queue of keys from every rank) on a tiny PNG folder: 3
#: steps of 4 ranks x 2 images (2 steps an epoch), with k-NN validation after the first epoch.
CONFIG = {
    "seed_everything": 0,
    "trainer": {
        "max_steps": 3,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "default_root_dir": "runs/moco",  # relative: each node's own working directory
        "callbacks": [
            {"class_path": "distill.eval.KNNEval", "init_args": {"k": [3]}},
            {"class_path": "tests_support.SaveRankState", "init_args": {"folder": None}},
        ],
    },
    "model": {
        "class_path": "distill.methods.MoCo",
        "init_args": {
            "backbone": "resnet8", "proj_hidden_dim": 16, "proj_dim": 8, "queue_size": 16,
            "key_momentum": 0.9,
            "optimizer": {
                "class_path": "torch.optim.SGD", "init_args": {"lr": 0.06, "momentum": 0.9},
            },
        },
    },
    "data": {
        "class_path": "distill.data.ImageFolderDataModule",
        "init_args": {
            "data_dir": None, "image_size": 16, "batch_size": 2, "num_workers": 0,
            "views": {"class_path": "distill.data.TwoViews", "init_args": {"crop_size": 16}},
        },
    },
}  # fmt: skip

#: What a user types on each node (the config aside), after setting Lightning's variables.
NODE_OPTIONS = (
    "--trainer.num_nodes", "2", "--trainer.devices", "2",
    "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp",
)  # fmt: skip


def launch_node(node: int, config: Path, port: int, folder: Path) -> subprocess.Popen:
    """``distill fit`` as a user starts it on node ``node`` (its own working directory,
    ``folder``), with only Lightning's variables telling it where the other node is."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "PL_", "TORCHELASTIC_"))
        and key not in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE", "LOCAL_RANK",
                        "RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE")
    }  # fmt: skip
    environment = {
        **inherited,
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "NODE_RANK": str(node), "WORLD_SIZE": "4",
        "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        "OMP_NUM_THREADS": "1",
        # The image-check cache of each "machine", outside its working directory.
        "XDG_CACHE_HOME": str(folder.parent / f"cache{node}"),
    }  # fmt: skip
    folder.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "distill", "fit", "--config", str(config), *NODE_OPTIONS],
        cwd=folder, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the node's ranks end with it
    )  # fmt: skip


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.multiprocess
def test_two_nodes_end_in_one_state_and_only_global_rank_zero_writes(tmp_path):
    images = write_png_folder(tmp_path / "images", per_class=6, size=16)
    config = yaml.safe_load(yaml.safe_dump(CONFIG))
    config["trainer"]["callbacks"][1]["init_args"]["folder"] = str(tmp_path / "states")
    config["data"]["init_args"]["data_dir"] = str(images)
    config_file = tmp_path / "moco.yaml"
    config_file.write_text(yaml.safe_dump(config))

    port = free_port()
    nodes = [launch_node(node, config_file, port, tmp_path / f"node{node}") for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:  # a node that failed leaves the other waiting for it: end both, with their ranks
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-5000:]

    states = [torch.load(tmp_path / "states" / f"rank{rank}.pt") for rank in range(4)]
    for rank, state in enumerate(states):
        # Global rank = node rank x devices + local rank; WORLD_SIZE counts processes.
        assert (state["node_rank"], state["local_rank"]) == divmod(rank, 2), rank
        assert state["world_size"] == 4 and state["global_step"] == 3
    # Every rank ends with one state: student, EMA key encoder, queue, its pointer, optimiser.
    # Batch-norm running statistics aside: DDP (without sync_batchnorm) copies rank 0's to
    # every rank before each forward, then each rank updates them with its own batch, so
    # they differ by the last step's update (and the checkpoint holds rank 0's).
    first = states[0]
    per_rank = [name for name in first["model"] if name.endswith(("running_mean", "running_var"))]
    assert per_rank
    parameters = sorted(first["optimizer"]["state"])
    assert parameters, "the optimiser holds momentum buffers"
    first_momenta = [first["optimizer"]["state"][i]["momentum_buffer"] for i in parameters]
    for rank, state in enumerate(states[1:], start=1):
        assert state["model"].keys() == first["model"].keys()
        for name, value in first["model"].items():
            if name not in per_rank:
                assert torch.equal(state["model"][name], value), (rank, name)
        assert state["optimizer"]["param_groups"] == first["optimizer"]["param_groups"]
        momenta = [state["optimizer"]["state"][i]["momentum_buffer"] for i in parameters]
        assert all(map(torch.equal, momenta, first_momenta)), rank
    model = first["model"]
    # 3 steps of 4 ranks x 2 keys went through the 16 slots: the last step's keys in slots
    # 0-7, rank by rank, each rank's its own.
    assert int(model["student.queue.pointer"]) == 3 * 4 * 2 % 16
    assert int(model["student.queue.filled"]) == 16
    blocks = model["student.queue.keys"][:8].split(2)
    assert all(not torch.equal(a, b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])

    # Only global rank 0 wrote: one version folder on node 0, and nothing on node 1, whose
    # working directory (its own disk) gave the same relative default_root_dir.
    assert files_under(tmp_path / "node1") == []
    logs = tmp_path / "node0" / "runs" / "moco" / "lightning_logs"
    (version,) = logs.iterdir()
    assert sorted(p.name for p in (version / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt", "last.ckpt",
    ]  # fmt: skip
    (events,) = version.glob("events.out.tfevents.*")  # named ...<host>.<pid>.<n>
    assert events.name.split(".")[-2] == str(first["pid"])
    assert sorted(p.name for p in version.iterdir()) == [
        "checkpoints", "config.yaml", events.name, "hparams.yaml",
    ]  # fmt: skip
    saved = yaml.safe_load((version / "config.yaml").read_text())
    assert saved["trainer"]["num_nodes"] == 2 and str(saved["trainer"]["devices"]) == "2"
    last = torch.load(version / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    for name, value in model.items():
        assert torch.equal(last["state_dict"][name], value), name

    # Lightning's progress messages and the model summary on node 0 only; every process
    # says only which rank it is, and nothing else (no warning printed once per process).
    node0, node1 = (err.splitlines() for _, err in outputs)
    assert "`Trainer.fit` stopped: `max_steps=3` reached." in node0
    assert sorted(node1) == [
        "Initializing distributed: GLOBAL_RANK: 2, MEMBER: 3/4",
        "Initializing distributed: GLOBAL_RANK: 3, MEMBER: 4/4",
        "Seed set to 0",
        "[rank: 1] Seed set to 0",  # Lightning's, before the process knows its global rank
    ]
    assert not any("deprecated" in line for line in node0)
