"""benchmarks/compile.py on a tiny network: its table, its FLOP count against the formula of a
linear layer, no timing compared (one step per row, dynamo's eager backend: no C++ compiler)."""

from __future__ import annotations

import os

import torch
from torch import nn

TINY = ["resnet8", "--backend", "eager", "--batch-size", "2", "--steps", "1", "--warmup", "0",
        "--repeats", "1", "--matmul-size", "64"]  # fmt: skip


def rows(out: str) -> dict[str, dict[str, str]]:
    """The printed table's cells by row name and column header (the separator line dropped)."""
    lines = [line for line in out.splitlines() if line.startswith("| ") and line[2] != "-"]
    header, *body = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return {line[0]: dict(zip(header, line, strict=True)) for line in body}


def test_table_gives_times_flops_and_their_share_of_the_matmul_limit(compile_script, capsys):
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    compile_script.main(TINY)
    assert os.environ.get("TORCHINDUCTOR_CACHE_DIR") == cache  # its fresh cache was its own
    out = capsys.readouterr().out
    assert "backend=eager" in out and "GFLOP/s" in out.splitlines()[0]
    (name, row), *others = rows(out).items()
    assert name == "resnet8" and not others
    assert float(row["GFLOP/step"]) > 0
    for model in ("eager", "compiled"):
        assert float(row[f"{model} ms/step"]) > 0
        rate, share = row[f"{model} GFLOP/s (% of matmul)"].rstrip("%)").split(" (")
        assert float(rate) > 0 and int(share) >= 0
    # The same network, eager kernels both ways: the same logits and gradients.
    assert float(row["logits rel. diff"]) == 0 and float(row["gradients rel. diff"]) == 0


def test_step_flops_of_a_linear_layer_match_its_formula(compile_script):
    """``2·B·D·C`` for the forward product and as many for the weight's gradient; none for
    the images' gradient, which no one asks for."""
    batch, dim, classes = 4, 6, 3
    model = nn.Linear(dim, classes)
    flops = compile_script.step_flops(model, torch.randn(batch, dim), torch.arange(batch) % 3)
    assert flops == 2 * (2 * batch * dim * classes)
    assert model.weight.grad is None  # the count leaves no gradient behind


def test_documented_command_lines_parse(compile_script, arguments):
    # The docstring's lines, with the environment they set (OMP_NUM_THREADS=1) dropped.
    commands = [
        line[line.index("python ") :]
        for line in compile_script.__doc__.splitlines()
        if "python benchmarks/compile.py" in line
    ]
    assert len(commands) == 3, commands
    for command in commands:
        args = compile_script.parse(arguments(command))
        assert args.batch_size > 0 and args.backbones, command
