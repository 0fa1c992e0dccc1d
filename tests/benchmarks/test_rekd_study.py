"""benchmarks/rekd_study.py on a user's own runs: fake logs in tmp_path, no training."""

from __future__ import annotations

import statistics

MOCO = "cifar10-5k/moco_resnet8_seed{}"
REKD = "cifar10-5k/rekd_resnet20_resnet8_seed{}"
VGG8 = "cifar10-5k/rekd_vgg8_resnet8_seed{}"
FIGURES = ["rekd_gain.png", "rekd_knn_curves.png"]


def rekd(knn: float) -> dict[str, float]:
    """A ReKD run's final values: student and teacher k-NN, mined precision."""
    return {"val/knn_top1": knn, "val/teacher_knn_top1": knn + 0.02,
            "train/mined_precision": 0.2}  # fmt: skip


def table_rows(out: str) -> dict[str, list[str]]:
    """The cells of the printed table's rows by their first cell (header and separator
    dropped)."""
    lines = [line for line in out.splitlines() if line.startswith("| ")][1:]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return {row[0]: row[1:] for row in rows}


def test_report_writes_its_figures_to_the_runs_root(
    rekd_study, write_run, figure_hashes, tmp_path, capsys
):
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(runs / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.38 + 0.01 * seed}, seed=seed)  # fmt: skip
        write_run(runs / REKD.format(seed), epochs=30, max_epochs=30, final=rekd(0.4), seed=seed)
    committed = figure_hashes()
    assert committed, "the repository's benchmarks/figures should hold README's figures"
    rekd_study.main(["--report", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    figures = runs / "cifar10-5k" / "figures"
    assert sorted(p.name for p in figures.iterdir()) == FIGURES
    assert [line for line in out.splitlines() if line.startswith("wrote")] == [
        f"wrote {figures / name}" for name in FIGURES
    ]
    assert figure_hashes() == committed


def test_report_without_logs_writes_nothing_and_says_so(
    rekd_study, figure_hashes, tmp_path, capsys
):
    committed = figure_hashes()
    rekd_study.main(["--report", "--runs-root", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert out == f"no logs of the study's rows under {tmp_path / 'runs'}: no table, no figures\n"
    assert not list(tmp_path.rglob("*.png"))
    assert figure_hashes() == committed


def test_gain_figure_without_its_baseline_is_neither_written_nor_announced(
    rekd_study, write_run, tmp_path, capsys
):
    runs = tmp_path / "runs"
    write_run(runs / REKD.format(0), epochs=30, max_epochs=30, final=rekd(0.4))
    figures = tmp_path / "figures"
    rekd_study.main(["--report", "--runs-root", str(runs), "--figures-dir", str(figures)])
    out = capsys.readouterr().out
    assert [p.name for p in figures.iterdir()] == ["rekd_knn_curves.png"]
    assert f"{figures / 'rekd_gain.png'} not written: no logs of a MoCo-v2 k-NN" in out
    assert [line for line in out.splitlines() if line.startswith("wrote")] == [
        f"wrote {figures / 'rekd_knn_curves.png'}"
    ]


def test_unfinished_runs_are_marked_and_rows_never_run_are_listed(
    rekd_study, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs"
    moco = {0: 0.38, 1: 0.40}
    for seed, knn in moco.items():
        write_run(runs / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": knn}, seed=seed)  # fmt: skip
    write_run(runs / MOCO.format(2), epochs=5, max_epochs=30, final={"val/knn_top1": 0.3},
              seed=2, then_steps=2)  # fmt: skip
    write_run(runs / VGG8.format(0), epochs=30, max_epochs=30, final=rekd(0.41))
    rekd_study.main(["--report", "--runs-root", str(runs)])
    out = capsys.readouterr().out
    rows = table_rows(out)
    # The gain over the two finished MoCo-v2 seeds; one ReKD seed borrows their deviation.
    base = [100 * v for v in moco.values()]
    error = (statistics.variance(base) / 2 + statistics.variance(base) / 1) ** 0.5
    gain = f"{41 - statistics.mean(base):+.1f} ± {error:.1f}"
    # Mined precision: the mean over the last 5 epochs (--precision-epochs), 0.01 apart.
    precision = f"{statistics.mean(0.2 - 0.01 * k for k in range(5)):.3f}"
    assert rows == {
        "MoCo-v2 resnet8": ["2", "39.0 ± 1.4", "-", "-", "-", "-", "seed0 38.0, seed1 40.0"],
        "MoCo-v2 resnet8 [unfinished: 5 of 30 epochs]": [
            "1",
            "30.0",
            "-",
            "-",
            "-",
            "-",
            "seed2 30.0",
        ],
        "ReKD, online vgg8 teacher": ["1", "41.0", gain, "43.0", precision, "-", "seed0 41.0"],
    }
    never = [r.name for r in rekd_study.ROWS if r.name not in ("moco", "rekd_vgg8")]
    assert f"not run yet (no logs): {', '.join(never)}" in out
    assert drawn["rekd_knn_curves.png"]["legend"] == [
        "MoCo-v2 resnet8, seed 0",
        "MoCo-v2 resnet8 [unfinished: 5 of 30 epochs], seed 2",
        "ReKD, online vgg8 teacher, seed 0",
    ]
    assert drawn["rekd_gain.png"]["legend"] == ["online vgg8 teacher"]


def test_seeds_choose_the_runs_reported(rekd_study, write_run, tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(runs / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.38 + 0.01 * seed}, seed=seed)  # fmt: skip
    rekd_study.main(["--report", "--rows", "moco", "--seeds", "0", "2", "--runs-root", str(runs),
                     "--figures-dir", str(tmp_path / "figures")])  # fmt: skip
    rows = table_rows(capsys.readouterr().out)
    assert rows["MoCo-v2 resnet8"][:2] == ["2", "39.0 ± 1.4"]
    assert rows["MoCo-v2 resnet8"][-1] == "seed0 38.0, seed2 40.0"  # the seed-by-seed column


def test_documented_command_lines_parse_and_reports_run(
    rekd_study, documented_commands, arguments, write_run, started, tmp_path, capsys, monkeypatch
):
    """Every documented line parses; a ``--report`` one runs on fake logs of some rows, a
    training one starts its runs (faked: they leave no logs). A relative ``--figures-dir``
    (RESULTS.md's ``<folder>``) is the user's working directory's, here tmp_path: never the
    repository's."""
    monkeypatch.chdir(tmp_path)
    commands = documented_commands("rekd_study.py")
    assert len(commands) >= 4, commands  # the docstring's three and README's two at least
    logged, empty = tmp_path / "logged", tmp_path / "empty"
    for seed in (0, 1, 2):
        write_run(logged / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.38}, seed=seed)  # fmt: skip
        write_run(logged / REKD.format(seed), epochs=30, max_epochs=30, final=rekd(0.4))
    for command in commands:
        args = rekd_study.parse(arguments(command))
        before = len(started)
        runs = logged if args.report else empty
        rekd_study.main(arguments(command, "--runs-root", str(runs)))
        out = capsys.readouterr().out
        if args.report:
            assert len(started) == before, command
            assert "| MoCo-v2 resnet8 " in out and "wrote" in out, (command, out)
        else:
            assert len(started) > before, command
            assert "no logs of the study's rows" in out, (command, out)
    assert (tmp_path / "<folder>" / "rekd_knn_curves.png").is_file()  # the documented folder
    # `--rows moco rekd_vgg8 --seeds 0`: MoCo-v2 (stage 1) before ReKD (stage 2), seed 0 only.
    line = next(c for c in commands if "--rows moco rekd_vgg8 --seeds 0" in c)
    del started[:]
    rekd_study.main(arguments(line, "--runs-root", str(empty)))
    assert [(c[c.index("--config") + 1], c[c.index("--seed_everything") + 1]) for c in started] == [
        ("configs/moco/cifar10-5k_resnet8.yaml", "0"),
        ("configs/rekd/cifar10-5k_vgg8_resnet8.yaml", "0"),
    ]


def test_rows_that_used_labels_are_marked_in_the_table_and_the_legend(
    rekd_study, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs"
    offline = "cifar10-5k/rekd_supervised-resnet20_resnet8_seed{}"
    for seed in (0, 1):
        write_run(runs / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.38}, seed=seed)  # fmt: skip
        write_run(runs / REKD.format(seed), epochs=30, max_epochs=30, final=rekd(0.4), seed=seed)
        write_run(runs / offline.format(seed), epochs=30, max_epochs=30, final=rekd(0.42),
                  seed=seed)  # fmt: skip
    rekd_study.main(["--report", "--runs-root", str(runs), "--figures-dir", str(tmp_path / "f")])
    out = capsys.readouterr().out
    rows = table_rows(out)
    marked = "ReKD, offline supervised resnet20 teacher, 40 epochs (labels)"
    assert marked in rows and "ReKD, online resnet20 teacher" in rows
    assert not [row for row in rows if "online" in row and "(labels)" in row]
    assert rekd_study.LABELS_NOTE in out
    legend = drawn["rekd_gain.png"]["legend"]
    assert "offline supervised resnet20 teacher, 40 epochs (labels)" in legend
    assert "online resnet20 teacher" in legend


def test_distillation_rows_are_drawn_by_teacher_with_their_gains(
    rekd_study, write_run, drawn, tmp_path, capsys
):
    runs = tmp_path / "runs"
    seed_moco = "cifar10-5k/seed_moco-vgg8_resnet8_seed{}"
    disco_supervised = "cifar10-5k/disco_supervised-resnet20_resnet8_seed{}"
    for seed in (0, 1):
        write_run(runs / MOCO.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.38 + 0.02 * seed}, seed=seed)  # fmt: skip
        write_run(runs / seed_moco.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.45}, seed=seed)  # fmt: skip
        write_run(runs / disco_supervised.format(seed), epochs=30, max_epochs=30,
                  final={"val/knn_top1": 0.41}, seed=seed)  # fmt: skip
    figures = tmp_path / "figures"
    rekd_study.main(["--report", "--runs-root", str(runs), "--figures-dir", str(figures)])
    rows = table_rows(capsys.readouterr().out)
    assert rows["SEED, MoCo-v2 vgg8 teacher (frozen)"][2] == "+6.0 ± 1.0"  # vs 39.0 ± 1.4
    assert "DisCo, supervised resnet20 teacher, 40 epochs (labels)" in rows
    assert (figures / "distillation_gain.png").is_file()
    shown = drawn["distillation_gain.png"]
    assert shown["legend"] == ["SEED", "DisCo"]
    assert shown["xticks"] == ["MoCo-v2 vgg8, 60 epochs", "supervised resnet20, 40 epochs (labels)"]
