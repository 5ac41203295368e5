"""The task registry and the shared Task interface."""
import pytest

from minirlhf.tasks import TASKS, ArithmeticTask, BanditTask, InstructTask, JsonlTask, Task, get_task


def test_registry_names_and_types():
    assert TASKS == {"arithmetic": ArithmeticTask, "instruct": InstructTask, "bandit": BanditTask, "jsonl": JsonlTask}
    assert isinstance(get_task("arithmetic"), ArithmeticTask)
    assert isinstance(get_task("instruct"), InstructTask)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"'arithmetic', 'bandit', 'instruct'"):
        get_task("sudoku")


def test_config_keywords_pass_through():
    t = get_task("arithmetic", max_operand=9, seed=5)
    assert t.config.max_operand == 9 and t.config.seed == 5
    assert len(t.all_questions()) == 10 * 10 + 10 * 11 // 2
    with pytest.raises(ValueError, match="unknown field"):
        get_task("arithmetic", nonsense=1)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_keeps_the_interface(name):
    t = get_task(name)
    assert isinstance(t, Task) and t.name == name
    assert t.template_name in ("plain", "chat")
    assert isinstance(t.max_response_tokens, int) and t.max_response_tokens > 0
    assert isinstance(t.pretrain_text(), str) and t.pretrain_text()
    for split in ("train", "test"):
        prompts = t.prompts(split)
        assert prompts and all(isinstance(p, str) for p in prompts)
        rows = t.sft_rows(split)
        assert rows and all(set(r) == {"prompt", "response"} for r in rows)
    assert not set(t.prompts("train")) & set(t.prompts("test"))
    with pytest.raises(ValueError, match="split"):
        t.prompts("validation")
    # a reference, where it exists, earns the top score and the metric's headline key
    p = t.prompts("test")[0]
    ref = t.reference(p)
    assert ref is not None
    assert 0.0 <= t.score(p, ref) <= 1.0
    assert t.metric_name in t.metric([p], [ref])
