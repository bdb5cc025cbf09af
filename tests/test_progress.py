"""Progress in a log (fafnet/io/progress.py): what is done of what total, the rate and the time
left, at a steady rate when no terminal is attached; the run logs receive the lines."""
import logging

import pytest

from fafnet.io import progress as progress_module
from fafnet.io.progress import LoggedProgress, duration_text, progress
from fafnet.io.logs import log_to_file


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_lines_come_every_interval_with_done_total_rate_and_time_left(clock, caplog):
    bar = LoggedProgress(total=40, desc="evaluating", unit="slice", interval_s=30)
    with caplog.at_level(logging.INFO, logger="fafnet.progress"):
        for _ in range(10):          # 10 slices in 20 s: no line yet (interval 30 s)
            clock.now += 2
            bar.update(1)
        assert caplog.records == []
        for _ in range(10):          # the line after 30 s: 15 of 40 done at 0.5 slices/s
            clock.now += 2
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "evaluating: 15/40 slices (38%), 2 s/slice, about 50 s left"
    assert len(lines) == 2 and lines[1] == "evaluating: 20 slices done in 40 s"


def test_iterating_counts_and_closes(clock, caplog):
    with caplog.at_level(logging.INFO, logger="fafnet.progress"):
        items = list(LoggedProgress(range(3), desc="loading", unit="volume", interval_s=0))
    assert items == [0, 1, 2]
    assert [r.getMessage() for r in caplog.records][-1] == "loading: 3 volumes done in 0 s"
    assert "loading: 1/3 volumes (33%)" in caplog.records[0].getMessage()


def test_an_error_inside_the_block_ends_without_a_done_line(clock, caplog):
    with caplog.at_level(logging.INFO, logger="fafnet.progress"), pytest.raises(RuntimeError):
        with LoggedProgress(range(3), desc="x", interval_s=60) as bar:
            for _ in bar:
                raise RuntimeError("boom")
    assert caplog.records == []


def test_without_a_terminal_progress_logs_and_training_opts_out(monkeypatch):
    monkeypatch.setattr(progress_module, "on_terminal", lambda: False)
    assert isinstance(progress(range(2), desc="d"), LoggedProgress)
    assert not isinstance(progress(range(2), log=False), LoggedProgress)
    monkeypatch.setattr(progress_module, "on_terminal", lambda: True)
    assert not isinstance(progress(range(2)), LoggedProgress)   # the tqdm bar


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FAFNET_PROGRESS_INTERVAL_S", "5")
    assert LoggedProgress(range(1)).interval_s == 5.0
    monkeypatch.setenv("FAFNET_PROGRESS_INTERVAL_S", "soon")
    with pytest.raises(ValueError, match="FAFNET_PROGRESS_INTERVAL_S='soon' must be a number"):
        LoggedProgress(range(1))


def test_a_run_log_receives_the_project_progress_lines(tmp_path):
    run_logger = logging.getLogger("some-run")
    path = str(tmp_path / "test.log")
    with log_to_file(run_logger, path):
        run_logger.info("run line")
        logging.getLogger("fafnet.progress").info("loading: 3 volumes done in 1 s")
    logging.getLogger("fafnet.progress").info("after the run: not in its log")
    text = open(path).read()
    assert "run line" in text and "loading: 3 volumes done in 1 s" in text and "after the run" not in text


def test_durations_read_naturally():
    assert [duration_text(s) for s in (12.3, 185, 7300)] == ["12 s", "3 min 5 s", "2 h 1 min"]
