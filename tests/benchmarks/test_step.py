"""benchmarks/step.py on tiny networks: its rows and its count of teacher forwards, no timing
compared (one step per row, resnet8 for both networks)."""

from __future__ import annotations

import pytest

from distill.methods import AT

TINY = ["--teacher", "resnet8", "--student", "resnet8", "--num-classes", "5", "--num-rows", "32",
        "--batch-size", "4", "--steps", "1", "--warmup", "0", "--repeats", "1"]  # fmt: skip


def rows(out: str) -> dict[str, dict[str, str]]:
    """The printed table's cells by row name and column header (the separator line dropped)."""
    lines = [line for line in out.splitlines() if line.startswith("| ") and line[2] != "-"]
    header, *body = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return {line[0]: dict(zip(header, line, strict=True)) for line in body}


class ATTwice(AT):
    """AT with a step that runs the teacher once more on its own."""

    def training_step(self, batch, batch_idx: int):
        self.teacher(batch[0])
        return super().training_step(batch, batch_idx)


def test_every_method_is_a_row_running_the_teacher_once(step_script, capsys):
    step_script.main(TINY)
    table = rows(capsys.readouterr().out)
    assert list(table) == [
        "student step + teacher forward",
        "KD", "DKD", "DIST",
        "FitNets", "AT", "SP", "VID", "RKD (DA)", "PKT", "CRD", "CRD+KD",
    ]  # fmt: skip
    assert {name: row["teacher forwards"] for name, row in table.items()} == dict.fromkeys(
        table, "1"
    )


def test_a_second_teacher_forward_is_counted_named_and_fails(step_script, monkeypatch, capsys):
    monkeypatch.setattr(step_script, "METHODS", {"AT": AT, "AT, teacher twice": ATTwice})
    with pytest.raises(SystemExit) as exit_:
        step_script.main(TINY)
    assert exit_.value.code == "teacher forwards per step other than 1: AT, teacher twice (2)"
    table = rows(capsys.readouterr().out)  # printed before the exit
    assert {name: row["teacher forwards"] for name, row in table.items()} == {
        "student step + teacher forward": "1",
        "AT": "1",
        "AT, teacher twice": "2",
    }


def test_documented_command_lines_parse(step_script, documented_commands, arguments):
    commands = documented_commands("step.py")
    assert len(commands) >= 3, commands  # the docstring's, one per pair and one on CUDA
    for command in commands:
        args = step_script.parse(arguments(command))
        assert args.batch_size > 0 and args.num_rows > 0, command
