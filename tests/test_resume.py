from types import SimpleNamespace

from distill.resume import WORLD_SIZE, resume_report


def settings(world: int) -> dict:
    keys = {"data.init_args.batch_size": 32, "trainer.accumulate_grad_batches": 1}
    return {"settings": {**keys, WORLD_SIZE: world}, "total_steps": 100}


def trainer(module) -> SimpleNamespace:
    return SimpleNamespace(lr_scheduler_configs=[], global_step=7, lightning_module=module)


def test_a_world_size_change_is_named_with_its_samples_per_step():
    report = resume_report(trainer(SimpleNamespace()), settings(4), settings(2), "last.ckpt")
    assert f"{WORLD_SIZE}: 4 -> 2" in report
    assert "gradient accumulation): 128 -> 64" in report
    assert "lr_reference_batch" not in report


def test_an_lr_scaled_by_the_global_batch_keeps_the_checkpoints_scale_and_says_so():
    dino = SimpleNamespace(lr_reference_batch=256)
    report = resume_report(trainer(dino), settings(4), settings(2), "last.ckpt")
    assert (
        "the lr was scaled by the samples per step when the run started "
        "(model.init_args.lr_reference_batch=256): the resumed optimiser state keeps that "
        "scale, x 128/256; only a new run would scale it by 64/256"
    ) in report
    assert resume_report(trainer(dino), settings(4), settings(4), "last.ckpt") is None
