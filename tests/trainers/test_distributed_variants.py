"""The issue-17 variants on two gloo processes: a SimPO and an ORPO step give the weights of one
process (no coupling between pairs), and REINFORCE++'s advantages on each rank's half of a batch,
whitened with the all-reduced statistics, are those of the whole batch in one process."""
import os

import pytest
import torch
import torch.distributed as dist

from minirlhf.checkpoint import load_tensors

from test_distributed_more import COMMON, assert_same, init, join, one_and_two_processes, spawn_or_call  # noqa: F401


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_one_reference_free_step_on_two_processes_equals_one_process(init, tmp_path, loss_type):  # noqa: F811
    """Catches: a loss scale that is not the share of the step's pairs (e.g. a per-rank mean)."""
    a, b = one_and_two_processes(["dpo", "--init", str(init / "gpt"), "--data", str(init / "prefs" / "train.jsonl"),
                                  "--dpo.loss-type", loss_type, "--eval-data", "none", "--eval-at-start", "false",
                                  "--eval-prompts", "2", "--eval-every", "99", *COMMON], tmp_path)
    start = load_tensors(init / "gpt" / "model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in start)
    assert_same(a, b)


def reinforce_pp_worker(rank, world, port, data_path, out_path):
    from minirlhf.distributed import global_reduction
    from minirlhf.objectives import reinforce_pp_advantages

    d = join(rank, world, port)
    data = torch.load(data_path, weights_only=True)
    rows = list(range(rank * 8 // world, (rank + 1) * 8 // world))  # whole groups of 4 on each rank
    adv = reinforce_pp_advantages(*(data[k][rows] for k in ("scores", "logp", "ref", "mask")), 0.3, 4,
                                  reduce=global_reduction(d))
    torch.save(adv, f"{out_path}.{rank}")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        os._exit(0)


def test_reinforce_pp_advantages_are_whitened_over_the_global_batch(tmp_path):
    """Catches: per-rank whitening (reduce not passed through to whiten)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 3, 5, 2, 4, 5, 1, 2])
    mask = (torch.arange(5)[None] < lengths[:, None]).double()
    data = {"scores": torch.rand(8, generator=g, dtype=torch.double), "logp": -torch.rand(8, 5, generator=g,
            dtype=torch.double), "ref": -torch.rand(8, 5, generator=g, dtype=torch.double), "mask": mask}
    data["scores"][4:] += 3.0  # the two halves differ: per-rank whitening would differ from the global one
    torch.save(data, tmp_path / "data.pt")
    spawn_or_call(reinforce_pp_worker, 1, tmp_path / "data.pt", tmp_path / "one")
    spawn_or_call(reinforce_pp_worker, 2, tmp_path / "data.pt", tmp_path / "two")
    one = torch.load(f"{tmp_path / 'one'}.0", weights_only=True)
    two = torch.cat([torch.load(f"{tmp_path / 'two'}.{r}", weights_only=True) for r in (0, 1)])
    torch.testing.assert_close(one, two)
