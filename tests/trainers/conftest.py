import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sft_model(tmp_path_factory):
    """A tiny pretrained (10 steps) and fine-tuned (6 steps) arithmetic model: the start of the RL
    trainers' tests, built once for all of them."""
    from minirlhf.trainers.pretrain import pretrain
    from minirlhf.trainers.sft import sft
    from tiny_configs import pretrain_cfg, sft_cfg

    out = tmp_path_factory.mktemp("rl_base")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(pretrain_cfg(out / "pt", steps=10))
        sft(sft_cfg(out / "pt" / "model", out / "sft", steps=6))
    finally:
        torch.set_num_threads(before)
    return out / "sft" / "model"


def assert_same_weights(run_a, run_b) -> None:
    """The final model folders of two runs hold bit-identical tensors (a resumed run = the uninterrupted one)."""
    from minirlhf.checkpoint import load_tensors

    wa = load_tensors(run_a / "model" / "model.safetensors")
    wb = load_tensors(run_b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
