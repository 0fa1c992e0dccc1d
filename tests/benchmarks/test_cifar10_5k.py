"""benchmarks/cifar10_5k.py on a user's own runs: fake logs in tmp_path, no training."""

from __future__ import annotations

import math
import statistics
import subprocess
from pathlib import Path

import pytest

#: The distillation suite's rows in order, by the log folder of each (under runs/cifar10-5k):
#: the folders of the rows run before FitNets, AT, SP, VID, PKT, DKD and DIST are unchanged.
FOLDERS = {
    "teacher resnet20": "supervised_resnet20",
    "student resnet8 alone": "supervised_resnet8",
    "KD": "kd_resnet20_resnet8",
    "DKD": "dkd_resnet20_resnet8",
    "DIST": "dist_resnet20_resnet8",
    "FitNets": "fitnets_resnet20_resnet8",
    "AT": "at_resnet20_resnet8",
    "SP": "sp_resnet20_resnet8",
    "VID": "vid_resnet20_resnet8",
    "RKD": "rkd_resnet20_resnet8",
    "PKT": "pkt_resnet20_resnet8",
    "CRD": "crd_resnet20_resnet8",
    "CRD+KD": "crd_kd_resnet20_resnet8",
}
STUDENTS = list(FOLDERS.values())[1:]
VALUES = {"val/top1": 0.6, "val/knn_top1": 0.58}


def tables(out: str) -> list[list[list[str]]]:
    """The Markdown tables printed in ``out``: per table, its rows of cells (header first,
    the separator line dropped)."""
    found, current = [], []
    for line in [*out.splitlines(), ""]:
        if line.startswith("|-"):
            continue
        if line.startswith("| "):
            current.append([cell.strip() for cell in line.strip("|").split(" | ")])
        elif current:
            found.append(current)
            current = []
    return found


def column(table: list[list[str]], name: str) -> dict[str, str]:
    """The cells of column ``name`` by the table's first column."""
    index = table[0].index(name)
    return {row[0]: row[index] for row in table[1:]}


def write_suite(write_run, runs, seeds=(0,)) -> None:
    """Finished logs of every run of the distillation suite (students at ``seeds``) and of
    the self-supervised one."""
    write_run(runs / "cifar10-5k/supervised_resnet20", epochs=40, max_epochs=40, final=VALUES)
    for folder in STUDENTS:
        for seed in seeds:
            tagged = folder if seed == 0 else f"{folder}_seed{seed}"
            write_run(runs / "cifar10-5k" / tagged, epochs=40, max_epochs=40, final=VALUES)
    knn = {"val/knn_top1": 0.38, "val/teacher_knn_top1": 0.4}
    write_run(runs / "cifar10-5k/init/cifar10-5k_resnet8", epochs=1, max_epochs=30, final=knn)
    for folder in ("dino_resnet8", "moco_resnet8", "rekd_resnet20_resnet8"):
        write_run(runs / "cifar10-5k" / folder, epochs=30, max_epochs=30, final=knn)


def test_figures_go_to_the_runs_root_not_over_the_committed_ones(
    cifar10_5k, write_run, figure_hashes, tmp_path, capsys
):
    runs = tmp_path / "runs"
    for folder in ("supervised_resnet20", "kd_resnet20_resnet8"):
        write_run(runs / "cifar10-5k" / folder, epochs=40, max_epochs=40, final=VALUES)
    committed = figure_hashes()
    assert committed, "the repository's benchmarks/figures should hold README's figures"
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    figures = runs / "cifar10-5k" / "figures"
    names = ["distillation_curves.png", "distillation_final.png"]
    assert sorted(p.name for p in figures.iterdir()) == names
    assert [line for line in out.splitlines() if line.startswith("wrote")] == [
        f"wrote {figures / name}" for name in names
    ]
    assert figure_hashes() == committed


def test_figures_dir_names_the_folder_implies_figures_and_replaces_its_files(
    cifar10_5k, write_run, figure_hashes, tmp_path, capsys
):
    runs, chosen = tmp_path / "runs", tmp_path / "chosen"
    write_run(runs / "cifar10-5k/kd_resnet20_resnet8", epochs=40, max_epochs=40, final=VALUES)
    chosen.mkdir()
    (chosen / "distillation_final.png").write_bytes(b"an older figure")
    committed = figure_hashes()
    cifar10_5k.main(["distillation", "--report", "--figures-dir", str(chosen),
                     "--runs-root", str(runs)])  # fmt: skip
    assert sorted(p.name for p in chosen.iterdir()) == [
        "distillation_curves.png",
        "distillation_final.png",
    ]
    assert (chosen / "distillation_final.png").read_bytes().startswith(b"\x89PNG")
    assert not (runs / "cifar10-5k" / "figures").exists()
    assert figure_hashes() == committed
    assert f"wrote {chosen / 'distillation_final.png'}" in capsys.readouterr().out


def test_a_figures_dir_that_cannot_be_written_is_one_message(
    cifar10_5k, write_run, tmp_path, capsys
):
    runs, taken = tmp_path / "runs", tmp_path / "a_file"
    write_run(runs / "cifar10-5k/kd_resnet20_resnet8", epochs=40, max_epochs=40, final=VALUES)
    taken.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_:
        cifar10_5k.main(["distillation", "--report", "--figures-dir", str(taken),
                         "--runs-root", str(runs)])  # fmt: skip
    # The reason is the system's (here: a file stands where the folder would be).
    assert exit_.value.code.startswith(f"cannot write {taken / 'distillation_curves.png'}: ")
    assert tables(capsys.readouterr().out)  # the table came first
    assert taken.read_text() == "not a folder"


def test_without_logs_nothing_is_written_and_it_says_so(
    cifar10_5k, figure_hashes, tmp_path, capsys
):
    committed = figure_hashes()
    runs = tmp_path / "runs"
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    assert out == f"no logs of the distillation runs under {runs}: no table, no figures\n"
    assert not list(tmp_path.rglob("*.png"))
    assert figure_hashes() == committed


def test_a_figure_without_values_is_not_written(cifar10_5k, write_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    # Stopped in its first epoch: training scalars only, no validation yet.
    for folder in ("kd_resnet20_resnet8", "rkd_resnet20_resnet8"):
        write_run(runs / "cifar10-5k" / folder, epochs=0, max_epochs=40, final={}, then_steps=2)
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    epochs = column(tables(out)[0], "epochs")
    assert epochs == {"KD": "unfinished: 0 of 40 epochs", "RKD": "unfinished: 0 of 40 epochs"}
    figures = runs / "cifar10-5k" / "figures"
    for name in ("distillation_curves.png", "distillation_final.png"):
        assert f"{figures / name} not written: no run logged val/top1 or val/knn_top1" in out
    assert "wrote" not in out
    assert not list(tmp_path.rglob("*.png"))


def test_methods_never_run_are_left_out_of_tables_and_figures(
    cifar10_5k, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs"
    for folder in ("supervised_resnet20", "kd_resnet20_resnet8"):
        write_run(runs / "cifar10-5k" / folder, epochs=40, max_epochs=40, final=VALUES)
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    assert list(column(tables(out)[0], "epochs").items()) == [
        ("teacher resnet20", "40"),
        ("KD", "40"),
    ]
    never = [label for label in FOLDERS if label not in ("teacher resnet20", "KD")]
    assert f"not run yet (no logs): {'; '.join(never)}" in out
    assert drawn["distillation_final.png"]["xticks"] == ["teacher resnet20 (n=1)", "KD (n=1)"]
    # No student alone: no line of it across the final values.
    assert drawn["distillation_final.png"]["legend"] == ["val/top1", "val/knn_top1"]
    # One legend beside both metric axes, with the two runs.
    assert drawn["distillation_curves.png"]["legend"] == ["teacher resnet20 (n=1)", "KD (n=1)"]


def test_short_and_unfinished_runs_are_shown_and_marked(
    cifar10_5k, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs/cifar10-5k"
    write_run(runs / "supervised_resnet20", epochs=40, max_epochs=40, final=VALUES)
    # A user's short run (`-- --trainer.max_epochs 2`), finished, and one interrupted.
    write_run(runs / "kd_resnet20_resnet8", epochs=2, max_epochs=2, final=VALUES)
    write_run(runs / "rkd_resnet20_resnet8", epochs=3, max_epochs=40, final=VALUES, then_steps=2)
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs.parent)])
    out = capsys.readouterr().out
    table = tables(out)[0]
    assert column(table, "epochs") == {
        "teacher resnet20": "40",
        "KD": "2 epochs, not 40",
        "RKD": "unfinished: 3 of 40 epochs",
    }
    assert column(table, "val/top1") == dict.fromkeys(column(table, "epochs"), "0.600 (best 0.600)")
    names = ["teacher resnet20 (n=1)", "KD [2 epochs, not 40] (n=1)",
             "RKD [unfinished: 3 of 40 epochs] (n=1)"]  # fmt: skip
    assert drawn["distillation_final.png"]["xticks"] == names
    assert drawn["distillation_curves.png"]["legend"] == names


def test_seeds_of_other_lengths_are_reported_apart_not_averaged(
    cifar10_5k, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs/cifar10-5k"
    finals = {0: 0.60, 1: 0.64}
    for seed, top1 in finals.items():
        folder = "supervised_resnet8" if seed == 0 else f"supervised_resnet8_seed{seed}"
        write_run(runs / folder, epochs=40, max_epochs=40, final={"val/top1": top1}, seed=seed)
    write_run(runs / "supervised_resnet8_seed2", epochs=2, max_epochs=2,
              final={"val/top1": 0.30}, seed=2)  # fmt: skip
    cifar10_5k.main(["distillation", "--report", "--seeds", "0", "1", "2", "--figures",
                     "--runs-root", str(runs.parent)])  # fmt: skip
    out = capsys.readouterr().out
    per_run, per_method = tables(out)
    assert column(per_run, "epochs") == {
        "student resnet8 alone, seed 0": "40",
        "student resnet8 alone, seed 1": "40",
        "student resnet8 alone, seed 2": "2 epochs, not 40",
    }
    percent = [100 * v for v in finals.values()]
    mean, std = statistics.mean(percent), statistics.stdev(percent)
    assert column(per_method, "seeds") == {
        "student resnet8 alone": "2",
        "student resnet8 alone [2 epochs, not 40]": "1",
    }
    assert column(per_method, "val/top1 %") == {
        "student resnet8 alone": f"{mean:.1f} ± {std:.1f}",
        "student resnet8 alone [2 epochs, not 40]": "30.0",
    }
    assert drawn["distillation_final.png"]["xticks"] == [
        "student resnet8 alone (n=2)",
        "student resnet8 alone [2 epochs, not 40] (n=1)",
    ]


def test_each_method_gains_over_the_student_alone_with_the_error_of_the_difference(
    cifar10_5k, write_run, tmp_path, capsys
):
    runs = tmp_path / "runs/cifar10-5k"
    alone, kd = [0.60, 0.62, 0.64], [0.65, 0.66, 0.70]
    for seed in range(3):
        tag = "" if seed == 0 else f"_seed{seed}"
        for folder, top1 in (("supervised_resnet8", alone), ("kd_resnet20_resnet8", kd)):
            write_run(runs / (folder + tag), epochs=40, max_epochs=40,
                      final={"val/top1": top1[seed]}, seed=seed)  # fmt: skip
        write_run(runs / f"crd_resnet20_resnet8{tag}", epochs=5, max_epochs=40,
                  final={"val/top1": 0.7}, seed=seed)  # fmt: skip
    write_run(runs / "dkd_resnet20_resnet8", epochs=40, max_epochs=40, final={"val/top1": 0.7})
    cifar10_5k.main(["distillation", "--report", "--seeds", "0", "1", "2",
                     "--runs-root", str(runs.parent)])  # fmt: skip
    per_method = tables(capsys.readouterr().out)[1]
    difference = 100 * (statistics.mean(kd) - statistics.mean(alone))
    error = 100 * math.sqrt(statistics.variance(kd) / 3 + statistics.variance(alone) / 3)
    assert per_method[0][3:5] == ["val/top1 %", "gain"]
    # One seed (DKD) or another length than the student alone's (CRD): no gain.
    assert column(per_method, "gain") == {
        "student resnet8 alone": "",
        "KD": f"+{difference:.1f} ± {error:.1f}",
        "DKD": "",
        "CRD [unfinished: 5 of 40 epochs]": "",
    }


def test_every_method_trains_the_student_with_the_one_teacher_and_recipe(cifar10_5k):
    """Only the method's own terms differ: teacher, trainer (epochs, the k-NN callback),
    optimiser, schedule, data and seed are KD's."""
    (teacher, _), methods = cifar10_5k.SUITES["distillation"]
    assert [run.label for run in methods] == list(FOLDERS)[2:]

    def recipe(run):
        trainer = run.config_value("trainer")
        model = run.config_value("model", "init_args")
        shared = ("optimizer", "lr_schedule", "milestones", "lr_decay")
        return (
            {key: value for key, value in trainer.items() if key != "default_root_dir"},
            run.config_value("seed_everything"),
            run.config_value("data"),
            {key: model[key] for key in shared},
        )

    teacher_dir = teacher.config_value("trainer", "default_root_dir")
    for run in methods:
        assert recipe(run) == recipe(methods[0]), run.label  # KD's
        model = run.config_value("model", "init_args")
        assert model["teacher_checkpoint"] == teacher_dir, run.label
        assert (model["student_backbone"], model["num_classes"]) == ("resnet8", 10), run.label


def test_every_method_is_a_row_of_both_tables_and_figures_from_its_own_logs(
    cifar10_5k, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs"
    write_suite(write_run, runs, seeds=(0, 1, 2))
    cifar10_5k.main(["distillation", "--report", "--seeds", "0", "1", "2", "--figures",
                     "--runs-root", str(runs)])  # fmt: skip
    out = capsys.readouterr().out
    assert "not run yet" not in out
    per_run, per_method = tables(out)
    seeds = {label: (0,) if label == "teacher resnet20" else (0, 1, 2) for label in FOLDERS}
    logs = {
        f"{label}, seed {seed}": str(runs / "cifar10-5k" / (f"{folder}_seed{seed}" if seed else
                                     folder) / "lightning_logs/version_0")
        for label, folder in FOLDERS.items()
        for seed in seeds[label]
    }  # fmt: skip
    assert list(column(per_run, "run").items()) == list(logs.items())
    kinds = ["-", "-", *3 * ["logits"], *8 * ["features"]]
    assert list(column(per_method, "kind").items()) == list(zip(FOLDERS, kinds, strict=True))
    assert column(per_method, "seeds") == {label: str(len(seeds[label])) for label in FOLDERS}
    names = [f"{label} (n={len(seeds[label])})" for label in FOLDERS]
    assert drawn["distillation_final.png"]["xticks"] == names
    assert drawn["distillation_curves.png"]["legend"] == names
    assert drawn["distillation_final.png"]["texts"] == ["on logits", "on features"]
    assert drawn["distillation_final.png"]["legend"] == [
        "val/top1", "val/top1 of student resnet8 alone",
        "val/knn_top1", "val/knn_top1 of student resnet8 alone",
    ]  # fmt: skip


def test_a_dozen_curves_stay_apart_by_colour_and_line_style(cifar10_5k, write_run, drawn, tmp_path):
    runs = tmp_path / "runs"
    write_suite(write_run, runs)
    cifar10_5k.main(["distillation", "--report", "--figures", "--runs-root", str(runs)])
    axes = drawn["distillation_curves.png"]["lines"]
    assert len(axes) == 2  # val/top1, val/knn_top1
    for lines in axes:
        styles = {label.removesuffix(" (n=1)"): (colour, style) for label, colour, style in lines}
        assert list(styles) == list(FOLDERS)
        assert len(set(styles.values())) == len(styles)
        assert styles["teacher resnet20"] == ("#000000", "-")
        assert {styles[label][1] for label in ("KD", "DKD", "DIST")} == {"--"}
        assert {styles[label][1] for label in list(FOLDERS)[5:]} == {"-"}


def test_missing_starts_only_the_runs_without_a_finished_log(
    cifar10_5k, write_run, monkeypatch, tmp_path, capsys
):
    logs = tmp_path / "runs/cifar10-5k"
    write_run(logs / "supervised_resnet20", epochs=40, max_epochs=40, final=VALUES)
    write_run(logs / "kd_resnet20_resnet8", epochs=40, max_epochs=40, final=VALUES)
    write_run(logs / "rkd_resnet20_resnet8", epochs=3, max_epochs=40, final=VALUES, then_steps=2)
    write_run(logs / "crd_resnet20_resnet8", epochs=2, max_epochs=2, final=VALUES)  # a trial
    started = []

    def finishes(command, **kwargs):
        """A run that leaves a finished log in its folder, as its newest version."""
        root = Path(command[command.index("--trainer.default_root_dir") + 1])
        started.append(root.name)
        version = len(list(root.glob("lightning_logs/version_*")))
        write_run(root, epochs=40, max_epochs=40, final=VALUES, version=version)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", finishes)
    cifar10_5k.main(["distillation", "--missing", "--runs-root", str(logs.parent)])
    assert started == [folder for folder in STUDENTS if folder != "kd_resnet20_resnet8"]
    # The report reads the logs the runs left, not those read to choose the runs.
    table = tables(capsys.readouterr().out)[0]
    assert column(table, "epochs") == dict.fromkeys(FOLDERS, "40")
    newest = column(table, "run")
    assert newest["RKD"] == str(logs / "rkd_resnet20_resnet8/lightning_logs/version_1")
    assert newest["KD"] == str(logs / "kd_resnet20_resnet8/lightning_logs/version_0")


def test_arguments_after_double_dash_reach_every_run(cifar10_5k, started, tmp_path, capsys):
    cifar10_5k.main(["distillation", "--figures", "--parallel", "2", "--runs-root",
                     str(tmp_path), "--", "--trainer.max_epochs", "2"])  # fmt: skip
    configs = [command[command.index("--config") + 1] for command in started]
    assert sorted(configs) == sorted(run.config for stage in cifar10_5k.SUITES["distillation"]
                                     for run in stage)  # fmt: skip
    for command in started:
        at = command.index("--trainer.max_epochs")
        assert command[at + 1] == "2", command
    assert "no logs of the distillation runs" in capsys.readouterr().out


def test_a_failed_run_stops_the_suite_with_a_message(cifar10_5k, started, monkeypatch, tmp_path):
    import subprocess

    fake, teacher = subprocess.run, "configs/supervised/cifar10-5k_resnet20.yaml"

    def teacher_fails(command, **kwargs):
        done = fake(command, **kwargs)
        done.returncode = 2 if command[command.index("--config") + 1] == teacher else 0
        return done

    monkeypatch.setattr(subprocess, "run", teacher_fails)
    with pytest.raises(SystemExit) as exit_:
        cifar10_5k.main(["distillation", "--runs-root", str(tmp_path)])
    assert str(exit_.value.code).startswith("failed: teacher resnet20 (exit status 2);")
    assert "Later stages were not started" in str(exit_.value.code)
    assert len(started) == 2  # stage 1 (teacher, student alone); no student of the teacher


def test_runs_root_moves_log_folders_and_teacher_paths(cifar10_5k, tmp_path):
    kd = cifar10_5k.Run("KD", "configs/kd/cifar10-5k_resnet20_resnet8.yaml")
    assert kd.command_line(["--x", "1"]) == ["fit", "--config", kd.config, "--x", "1"]
    moved = cifar10_5k.replace(kd, runs_root=tmp_path, tag="seed1",
                               args=("--seed_everything", "1"))  # fmt: skip
    assert moved.command_line() == [
        "fit", "--config", kd.config, "--seed_everything", "1",
        "--model.init_args.teacher_checkpoint", str(tmp_path / "cifar10-5k/supervised_resnet20"),
        "--trainer.default_root_dir", str(tmp_path / "cifar10-5k/kd_resnet20_resnet8_seed1"),
    ]  # fmt: skip


def test_a_variant_with_its_own_log_folder_keeps_it_under_every_seed(cifar10_5k, tmp_path):
    # distillation_checks' "AT, β 100": the AT config with another weight, in its own folder.
    (variant,) = [r for s in cifar10_5k.SUITES["distillation_checks"] for r in s if "β" in r.label]
    variant = cifar10_5k.replace(variant, runs_root=tmp_path)
    assert variant.root_dir() == tmp_path / "cifar10-5k/at_beta100_resnet20_resnet8"
    seeded = variant.with_seed(1)
    assert seeded.root_dir() == tmp_path / "cifar10-5k/at_beta100_resnet20_resnet8_seed1"
    line = seeded.command_line()
    assert line[line.index("--model.init_args.at_weight") + 1] == "100"
    # The last --trainer.default_root_dir is the one the CLI keeps: the seed's folder.
    assert line[-2:] == ["--trainer.default_root_dir", str(seeded.root_dir())]


def test_documented_command_lines_parse_and_reports_run(
    cifar10_5k, documented_commands, arguments, write_run, started, tmp_path, capsys
):
    """Every documented line parses; a ``--report`` one runs on a full suite of fake logs,
    a training one starts its runs (faked: they leave no logs)."""
    commands = documented_commands("cifar10_5k.py")
    assert len(commands) >= 6, commands  # the docstring's five and README's two at least
    assert any(" -- " in command for command in commands)
    logged, empty = tmp_path / "logged", tmp_path / "empty"
    write_suite(write_run, logged, seeds=(0, 1, 2))
    for command in commands:
        argv = arguments(command)
        args = cifar10_5k.parse(argv)
        assert args.extra == (argv[argv.index("--") + 1 :] if "--" in argv else []), command
        before = len(started)
        runs = logged if args.report else empty
        cifar10_5k.main(arguments(command, "--runs-root", str(runs)))
        out = capsys.readouterr().out
        if args.report:
            assert len(started) == before, command
            assert tables(out) and "not run yet" not in out, (command, out)
        else:
            assert len(started) > before, command
            assert "no logs of the" in out, (command, out)
