"""grad_norm and clip_and_norm against torch.nn.utils.clip_grad_norm_ on a small model."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from trainer_sdk import torch_utils  # noqa: E402
from trainer_sdk.torch_utils import clip_and_norm, grad_norm  # noqa: E402


def model_with_grads(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model.extra = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))  # a second dtype group
    model.frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)  # no grad: skipped
    loss = model(torch.randn(5, 8)).pow(2).sum() + model.extra.pow(3).sum().float()
    loss.backward()
    return model


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_grad_norm_equals_clip_grad_norm(norm_type: float) -> None:
    model = model_with_grads()
    reference_model = model_with_grads()
    ours = grad_norm(model.parameters(), norm_type)
    theirs = torch.nn.utils.clip_grad_norm_(reference_model.parameters(), max_norm=1e9, norm_type=norm_type)
    assert ours.dim() == 0 and ours.device == theirs.device and ours.dtype == theirs.dtype
    assert torch.equal(ours, theirs)
    # The fallback for torch without get_total_norm computes the same number.
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.allclose(torch_utils._total_norm(grads, norm_type), theirs, rtol=1e-6, atol=0)
    # grad_norm does not touch the gradients.
    for p, q in zip(model.parameters(), reference_model.parameters(), strict=True):
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad)


def test_grad_norm_of_nothing_and_of_one_tensor() -> None:
    assert torch.equal(grad_norm([]), torch.tensor(0.0))
    assert torch.equal(torch_utils._total_norm([], 2.0), torch.tensor(0.0))
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([3.0, 4.0])
    assert grad_norm(p).item() == 5.0


def test_grad_norm_is_a_tensor_not_a_number() -> None:
    model = model_with_grads()
    norm = grad_norm(p for p in model.parameters())  # a generator works too
    assert isinstance(norm, torch.Tensor) and not norm.requires_grad


def test_clip_and_norm_clips_and_returns_the_norm_before_clipping() -> None:
    model = model_with_grads()
    reference_model = model_with_grads()
    before = grad_norm(model.parameters())
    returned = clip_and_norm(model.parameters(), max_norm=0.5)
    expected = torch.nn.utils.clip_grad_norm_(reference_model.parameters(), max_norm=0.5)
    assert torch.equal(returned, expected) and torch.equal(returned, before)
    assert grad_norm(model.parameters()).item() == pytest.approx(0.5, rel=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grad_norm_stays_on_the_device() -> None:
    model = model_with_grads().cuda()
    for p in model.parameters():
        if p.grad is not None:
            p.grad = p.grad.cuda()
    norm = grad_norm(model.parameters())
    assert norm.device.type == "cuda" and norm.dim() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_report_holds_a_non_blocking_copy_from_the_gpu_until_its_batch_syncs() -> None:
    from trainer_sdk._points import PointConverter
    from trainer_sdk._session import _make_report
    from trainer_sdk._state import SessionState

    state = SessionState(run="pinned", rank=0, world_size=1, params={}, values={}, buffer_size=10)
    report = _make_report(state)
    big = torch.randn(4096, 4096, device="cuda")
    on_device = (big @ big).square().mean()  # queued work: the copy below lands after it
    copy = on_device.to("cpu", non_blocking=True)  # pinned, maybe not written yet
    report(0, loss=copy)
    ((_, _, metrics),) = state.queue
    assert metrics["loss"] is copy  # not read at once: it may not have landed
    ((_, _, values),) = PointConverter(state).drain(state.queue)
    assert values["loss"] == pytest.approx(on_device.item())
