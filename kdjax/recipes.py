"""Named recipes: the settings a published training procedure uses, applied before the flags given.

Values are keyed by `ExperimentConfig`'s flat setting names (`kdjax.config.ExperimentConfig.from_flat`).
"""

from __future__ import annotations

from typing import Any

# cifar-kd: RepDistiller / mdistiller's CIFAR-100 recipe (240 epochs of SGD, x0.1 at 150, 180, 210).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar-kd": {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 64,
                 "epochs": 240, "schedule": "step", "milestones": (150, 180, 210), "decay_factor": 0.1,
                 "augment": "crop-flip", "normalize": "dataset",
                 # mdistiller's CIFAR-100 configs (configs/cifar100/*.yaml): KD's weights; DKD's warm-up is set
                 # to 1/12 of training (its 20 of 240 epochs) once the data's size is known (RECIPE_WARMUP).
                 "method_defaults": (("kd", (("aux_weight", 0.9), ("ce_weight", 0.1), ("temperature", 4.0))),)},
    # char-lm: next-token distillation on Python's help text, character-level (vocabulary 103), windows of 128;
    # Adam 3e-3, batch 32; KD (and top-k KD) at T = 1 weighted as GKD (CE 0.5 + 0.5), so that the divergences compare.
    "char-lm": {"dataset": "text", "teacher": "causal_conv_128x5", "student": "causal_conv_32x2",
                "optimizer": "adam", "learning_rate": 3e-3, "batch_size": 32, "epochs": 10, "augment": "none",
                "method_defaults": tuple((method, (("aux_weight", 0.5), ("ce_weight", 0.5), ("temperature", 1.0)))
                                         for method in ("kd", "topk-kd"))},
    # imagenet-kd: mdistiller's ImageNet configs (configs/imagenet/r34_r18, r50_mv1): SGD 0.2 (batch 512), momentum 0.9,
    # weight decay 1e-4, 100 epochs, x0.1 at 30, 60, 90; KD at T = 1, 0.5 CE + 0.5 KD; DKD at T = 1, CE 1, beta 0.5
    # (2.0 for a MobileNetV1 student), warmed up over its first epoch (RECIPE_WARMUP). The images' views are the
    # image folder's (RandomResizedCrop(224) + flip for training), normalised with ImageNet's statistics.
    "imagenet-kd": {"optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.9, "weight_decay": 1e-4, "batch_size": 512,
                    "epochs": 100, "schedule": "step", "milestones": (30, 60, 90), "decay_factor": 0.1,
                    "augment": "none", "normalize": "imagenet", "teacher": "resnet34", "student": "resnet18",
                    "method_defaults": (("kd", (("aux_weight", 0.5), ("ce_weight", 0.5), ("temperature", 1.0))),
                                        ("dkd", (("beta", 0.5), ("ce_weight", 1.0), ("temperature", 1.0))))},
}
RECIPE_WARMUP = {"cifar-kd": ("dkd", "warmup_steps", 20 / 240),  # recipe -> (method, hyperparameter, of training)
                 "imagenet-kd": ("dkd", "warmup_steps", 1 / 100)}
SMALL_LEARNING_RATE_STUDENTS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")  # cifar-kd trains them at 0.01
HELP = ("a published training procedure's settings in one flag (cifar-kd: SGD 0.05 momentum 0.9, weight decay 5e-4, "
        "batch 64, 240 epochs, x0.1 at 150/180/210, crop-flip; 0.01 for MobileNetV2/ShuffleNet students; char-lm, "
        "lm's default: Python's help text, causal_conv_128x5 -> causal_conv_32x2, Adam 3e-3, batch 32, 10 epochs; "
        "imagenet-kd: mdistiller's ImageNet recipe, resnet34 -> resnet18 (resnet50 for a mobilenetv1 student), SGD 0.2 "
        "batch 512, weight decay 1e-4, 100 epochs, x0.1 at 30/60/90, KD T 1 at 0.5/0.5, DKD beta 0.5 (2 for "
        "mobilenetv1)); any flag given overrides it")


def recipe_values(recipe: str | None, student: str) -> dict[str, Any]:
    """The settings `recipe` gives a run whose student is `student` ({} for none); ValueError if unknown."""
    if recipe is None:
        return {}
    if recipe not in RECIPES:
        raise ValueError(f"--recipe: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    values = dict(RECIPES[recipe])
    if recipe == "cifar-kd" and student in SMALL_LEARNING_RATE_STUDENTS:
        values["learning_rate"] = 0.01
    if recipe == "imagenet-kd" and student == "mobilenetv1":  # configs/imagenet/r50_mv1: a ResNet-50 teacher, beta 2
        values["teacher"] = "resnet50"
        values["method_defaults"] = (values["method_defaults"][0], ("dkd", (("beta", 2.0), ("ce_weight", 1.0),
                                                                             ("temperature", 1.0))))
    return values
