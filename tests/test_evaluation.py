"""evaluate_task: the metric of the responses it generates, and (return_responses) those responses."""
import torch

from minirlhf.evaluation import evaluate_task, generate_responses
from minirlhf.model import GPT, GPTConfig
from minirlhf.tasks import get_task


def test_evaluate_task_returns_the_responses_it_scored():
    task = get_task("arithmetic", max_operand=9, max_test=12)
    tokenizer, template = task.build_tokenizer(), task.template()
    torch.manual_seed(0)
    model = GPT(GPTConfig(tokenizer.vocab_size, 32, 1, 2, 16)).eval()
    metrics, answers = evaluate_task(model, task, tokenizer, template, "test", (0.0, 1.0), 12, seed=3,
                                     return_responses=True)
    assert metrics == evaluate_task(model, task, tokenizer, template, "test", (0.0, 1.0), 12, seed=3)
    prompts = task.prompts("test")[:12]
    assert set(answers) == {"eval", "eval_t1"} and all(len(v) == 12 for v in answers.values())
    for prefix, responses in answers.items():  # the metric is the metric of these very responses
        assert {f"{prefix}/{k}": v for k, v in task.metric(prompts, responses).items()} == \
            {k: v for k, v in metrics.items() if k.startswith(prefix + "/")}
    assert answers["eval"] == generate_responses(model, tokenizer, template, prompts, task.max_response_tokens)
