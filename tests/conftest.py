"""Shared fixtures."""

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker takes its share of the cores for PyTorch's intra-op threads: two workers on two
    cores with two threads each would run four busy threads on two cores. The processes a test starts inherit
    the same share (``OMP_NUM_THREADS``), so a run split between a subprocess and this one computes alike."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if os.environ.get("PYTEST_XDIST_WORKER") and workers > 1:
        share = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        torch.set_num_threads(share)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests are skipped where torch sees no CUDA device (they never fail for want of one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch sees none)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Batch-1/2 CPU passes gain nothing from intra-op threads and stall badly when cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def stop_after(monkeypatch):
    """``stop_after({(phase, epoch), ...})``: at the end of each listed epoch (0-based) the training loop gets
    what a SIGINT handler gives it (save a checkpoint, then raise Interrupted), once per entry."""
    import signal

    from compressor.train import STOP, Trainer

    end_epoch = Trainer._end_epoch

    def arm(stops: set[tuple[str, int]]) -> None:
        def stop(self: Trainer, epoch: int, t0: float) -> None:
            end_epoch(self, epoch, t0)
            if (self.phase, epoch) in stops:
                stops.discard((self.phase, epoch))
                STOP.signum = signal.SIGINT

        monkeypatch.setattr(Trainer, "_end_epoch", stop)

    yield arm
    STOP.signum = 0
