"""benchmarks/attention_gap.py: AT's term between each finished student and the teacher, per
stage, against the formula in float64; students without a finished run are named, not
scored."""

from __future__ import annotations

import torch
from conftest import write_png_folder

from distill.backbones import create_backbone

# The distillation suite's val/top1 of every fake run (write_run's ``final``).
FINAL = {"val/top1": 0.6, "val/knn_top1": 0.5}


def save_run(write_run, root, backbone) -> None:
    """A finished 40-epoch run at ``root`` whose last.ckpt holds ``backbone`` as the student."""
    version = write_run(root, epochs=40, max_epochs=40, final=FINAL)
    (version / "checkpoints").mkdir()
    state = {f"student.backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"state_dict": state}, version / "checkpoints" / "last.ckpt")


def at_term64(student: torch.Tensor, teacher: torch.Tensor) -> float:
    """``β · mean_{b,k} (Q_s − Q_t)²``, ``Q`` the L2-normalised channel mean of ``f²``, in
    float64 (Zagoruyko & Komodakis 2017, RepDistiller's ``Attention`` with p = 2)."""

    def q(f):
        a = f.double().pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    return 1000.0 * (q(student) - q(teacher)).pow(2).mean().item()


def test_each_stage_gap_is_at_term_and_unfinished_students_are_named(
    attention_gap, write_run, tmp_path, capsys
):
    torch.manual_seed(0)
    runs, data = tmp_path / "runs", write_png_folder(tmp_path / "data", size=32)
    teacher, student = create_backbone("resnet20").eval(), create_backbone("resnet8").eval()
    save_run(write_run, runs / "cifar10-5k/supervised_resnet20", teacher)
    save_run(write_run, runs / "cifar10-5k/supervised_resnet8", student)  # alone, seed 0
    save_run(write_run, runs / "cifar10-5k/kd_resnet20_resnet8", student)  # KD, seed 0
    write_run(runs / "cifar10-5k/at_resnet20_resnet8", epochs=3, max_epochs=40, final=FINAL)

    attention_gap.main(["--seeds", "0", "--runs-root", str(runs), "--data", str(data)])
    out = capsys.readouterr().out
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert list(rows) == ["student resnet8 alone", "KD"]

    images = attention_gap.val_images(attention_gap.SUITES["distillation"][0][0], data)
    assert len(images) == 3 * 3  # 3 classes, 3 val images each
    expected = [
        at_term64(s, t)
        for s, t in zip(
            attention_gap.stage_maps(student, images),
            attention_gap.stage_maps(teacher, images),
            strict=True,
        )
    ]
    for label in rows:
        seeds, *stages, total, top1 = rows[label]
        assert seeds == "1" and top1 == "60.0"
        # The table prints 3 decimals (half a unit: 5e-4); the float32 term differs from the
        # float64 one by sums of at most 32 x 32 = 1,024 roundings, under 1e-4 relative.
        for printed, value in zip([*stages, total], [*expected, sum(expected)], strict=True):
            assert abs(float(printed) - value) <= 5e-4 + 1e-4 * value
    assert "AT (at_resnet20_resnet8)" in out  # 3 of 40 epochs: not scored, named
