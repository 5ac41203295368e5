import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_weights(run_a, run_b) -> None:
    """The final model folders of two runs hold bit-identical tensors (a resumed run = the uninterrupted one)."""
    from minirlhf.checkpoint import load_tensors

    wa = load_tensors(run_a / "model" / "model.safetensors")
    wb = load_tensors(run_b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
