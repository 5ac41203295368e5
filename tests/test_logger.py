import io
import json

import numpy as np
import pytest
import torch

from minirlhf.logger import MetricsLogger, Timer, read_metrics


class FakeClock:
    """A clock that reads `times` in order, so "time" values are known exactly."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_rows_are_sorted_json_with_step_time_and_converted_values(tmp_path):
    clock = FakeClock(100.0, 101.5, 103.0)
    with MetricsLogger(tmp_path, console=False, clock=clock) as log:
        row = log.log(1, {"loss": torch.tensor(0.5), "count": torch.tensor(3), "acc": np.float32(0.25),
                          "n": np.int64(7), "ok": True, "note": "x", "missing": None})
        log.log(2, {"b": 1.0, "a": 2})
    assert row == {"acc": 0.25, "count": 3, "loss": 0.5, "missing": None, "n": 7, "note": "x", "ok": True,
                   "step": 1, "time": 1.5}
    assert type(row["count"]) is int and type(row["n"]) is int and type(row["acc"]) is float

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert lines[1] == '{"a": 2, "b": 1.0, "step": 2, "time": 3.0}'
    assert lines[0] == json.dumps(row, sort_keys=True)
    assert read_metrics(tmp_path) == [row, {"a": 2, "b": 1.0, "step": 2, "time": 3.0}]


def test_each_line_is_flushed(tmp_path):
    log = MetricsLogger(tmp_path, console=False)
    log.log(1, {"loss": 1.0})
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1.0]  # before close
    log.close()
    log.close()  # idempotent
    with pytest.raises(RuntimeError, match="after close"):
        log.log(2, {})


def test_console_lines_every_n_steps_and_at_the_end(tmp_path):
    out = io.StringIO()
    with MetricsLogger(tmp_path, total_steps=5, every=2, stream=out) as log:
        for step in range(1, 6):
            log.log(step, {"zzz": 1, "kl": 0.012345678, "loss": 2.0 / step, "epoch": 0})
    assert out.getvalue().splitlines() == [
        "step 2/5 | loss 1 | kl 0.01235",
        "step 4/5 | loss 0.5 | kl 0.01235",
        "step 5/5 | loss 0.4 | kl 0.01235",
    ]


def test_console_keys_can_be_chosen(tmp_path):
    out = io.StringIO()
    with MetricsLogger(tmp_path, console_keys=["b", "a"], stream=out) as log:
        log.log(3, {"a": 1, "b": 0.5, "loss": 9.0})
    assert out.getvalue() == "step 3 | b 0.5 | a 1\n"


def test_disabled_logger_does_nothing(tmp_path, capsys):
    run = tmp_path / "rank1"
    with MetricsLogger(run, total_steps=3, enabled=False) as log:
        assert log.log(1, {"loss": 1.0}) is None
    assert not run.exists()
    assert capsys.readouterr() == ("", "")


def test_new_run_starts_a_fresh_file(tmp_path):
    with MetricsLogger(tmp_path, console=False) as log:
        log.log(1, {"x": 1})
    with MetricsLogger(tmp_path, console=False) as log:
        log.log(1, {"x": 2})
    assert [r["x"] for r in read_metrics(tmp_path)] == [2]


def test_resumed_log_equals_uninterrupted_log(tmp_path):
    def metrics(step):
        return {"loss": 1.0 / step, "kl": step * 0.1}

    # Uninterrupted: the run starts at clock 0 and logs step s at clock s.
    with MetricsLogger(tmp_path / "a", console=False, clock=FakeClock(0.0, 1.0, 2.0, 3.0, 4.0, 5.0)) as log:
        for s in range(1, 6):
            log.log(s, metrics(s))

    # Interrupted after step 5 with a checkpoint at step 3, and a half-written row from the crash.
    log = MetricsLogger(tmp_path / "b", console=False, clock=FakeClock(0.0, 1.0, 2.0, 3.0, 4.0, 5.0))
    for s in range(1, 6):
        log.log(s, metrics(s))
    log.close()
    with open(tmp_path / "b" / "metrics.jsonl", "a") as f:
        f.write('{"kl": 0.6000000000000001, "loss": 0.16')

    # A new process resumes from step 3; its clock starts elsewhere, "time" continues from 3.0.
    with MetricsLogger(tmp_path / "b", console=False, resume_step=3, clock=FakeClock(1000.0, 1001.0, 1002.0)) as log:
        assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3]
        for s in range(4, 6):
            log.log(s, metrics(s))

    assert read_metrics(tmp_path / "b") == read_metrics(tmp_path / "a")
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == (tmp_path / "a" / "metrics.jsonl").read_bytes()


def test_resume_without_a_file_starts_fresh(tmp_path):
    with MetricsLogger(tmp_path, console=False, resume_step=10) as log:
        log.log(11, {"x": 1})
    assert [r["step"] for r in read_metrics(tmp_path)] == [11]


def test_read_metrics_errors(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON object"):
        read_metrics(path)
    path.write_text('{"step": 1}\n{"loss": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: expected a JSON object with an int field 'step'"):
        read_metrics(path)
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')  # blank lines skipped, torn tail dropped
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(FileNotFoundError, match="no metrics file"):
        read_metrics(tmp_path / "elsewhere")


def test_nan_and_inf_survive(tmp_path):
    with MetricsLogger(tmp_path, console=False) as log:
        log.log(1, {"loss": float("nan"), "ratio": torch.tensor(float("inf"))})
    (row,) = read_metrics(tmp_path)
    assert np.isnan(row["loss"]) and row["ratio"] == float("inf")


def test_log_errors(tmp_path):
    with MetricsLogger(tmp_path, console=False) as log:
        with pytest.raises(ValueError, match=r"metric 'v': expected a scalar, got a tensor of shape \(3,\)"):
            log.log(1, {"v": torch.zeros(3)})
        with pytest.raises(ValueError, match="'step': the name is reserved"):
            log.log(1, {"step": 3})
        with pytest.raises(TypeError, match="metric 'm': expected a number"):
            log.log(1, {"m": [1, 2]})
        with pytest.raises(TypeError, match="step: expected an int"):
            log.log(1.0, {})
    assert read_metrics(tmp_path) == []  # no partial rows
    with pytest.raises(ValueError, match="every"):
        MetricsLogger(tmp_path, every=0)


def test_timer_accumulates_per_phase():
    timer = Timer(clock=FakeClock(0.0, 2.0, 10.0, 10.5, 11.0, 14.0, 20.0, 21.0))
    with timer("generation"):  # 0 -> 2
        pass
    with timer("update"):  # 10 -> 14, with a nested phase 10.5 -> 11
        with timer("backward"):
            pass
    with pytest.raises(KeyError):
        with timer("generation"):  # 20 -> 21, counted although the block raised
            raise KeyError("x")
    assert timer.as_metrics() == {"time/generation": 3.0, "time/backward": 0.5, "time/update": 4.0}
    assert timer.as_metrics(prefix="t_") == {"t_generation": 3.0, "t_backward": 0.5, "t_update": 4.0}
    timer.reset()
    assert timer.as_metrics() == {}
    with pytest.raises(ValueError, match="phase name"):
        timer("")
