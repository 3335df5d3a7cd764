"""Every distillation loss against its reference code (values and student gradients), float32 vs float64 references.

The references are restated in PyTorch in `tests/reference/reference_losses.py` and evaluated
by `tests/reference/make_loss_reference.py` into `losses_reference.npz`; masked cases are
compared with the reference on the batch without the masked positions.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import REFERENCE_DIR
from loss_cases import CASES, inputs

from kdjax import losses

RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(REFERENCE_DIR / "losses_reference.npz") as data:
        return dict(data)


def kdjax_loss(case, data):
    options = dict(case.options)
    extra = {} if "where" not in data else {"where": data["where"]}
    teacher = data["teacher"]
    if case.loss == "lskd":
        return lambda s: losses.kd_loss(losses.standardize_logits(s), losses.standardize_logits(teacher),
                                        **options, **extra)
    fn = getattr(losses, case.loss)
    if case.loss == "cross_entropy":
        return lambda s: fn(s, data["labels"], **options, **extra)
    if case.loss == "dkd_loss":
        return lambda s: fn(s, teacher, data["labels"], **options, **extra)
    if case.loss == "attention_transfer_loss":
        return lambda s: fn(s, teacher, **options, **extra)
    return lambda s: fn(s, teacher, **options, **extra)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_value_and_gradient_match_the_reference(case, ref):
    data = inputs(case)
    value, grad = jax.jit(jax.value_and_grad(kdjax_loss(case, data)))(data["student"])
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, ref[f"{case.name}/value"], rtol=RTOL, atol=ATOL, err_msg=case.name)
    np.testing.assert_allclose(grad, ref[f"{case.name}/grad"], rtol=RTOL, atol=ATOL, err_msg=case.name)
