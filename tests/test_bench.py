import pytest

from course_lib.bench import Timing, compare, measure, ratio_table


def test_measure_warms_up_then_times_each_repeat():
    calls = []
    timing = measure(lambda: calls.append(1), name="append", warmup=2, repeat=5)
    assert len(calls) == 7
    assert timing.name == "append" and len(timing.times) == 5
    assert all(t >= 0 for t in timing.times)


def test_sync_runs_after_every_timed_call():
    events = []
    measure(lambda: events.append("call"), warmup=1, repeat=3, sync=lambda: events.append("sync"))
    assert events == ["call", "sync"] + ["call", "sync"] * 3


def test_compare_interleaves_the_candidates():
    order = []
    timings = compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=3)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert [t.name for t in timings] == ["a", "b"]
    assert all(len(t.times) == 3 for t in timings)


def test_timing_statistics():
    t = Timing("x", (0.003, 0.001, 0.002, 0.010))
    assert t.median == pytest.approx(0.0025)
    assert t.best == 0.001
    assert t.median_ms == pytest.approx(2.5)


def test_ratio_table_shows_speed_up_against_the_baseline():
    table = ratio_table([Timing("slow", (0.2,)), Timing("fast", (0.05,)), Timing("tiny", (2e-6,))])
    lines = table.splitlines()
    assert "speed-up vs slow" in lines[0]
    assert lines[1].split()[-1] == "1.00x" and "200.000 ms" in lines[1]
    assert lines[2].split()[-1] == "4.00x"
    assert "2.0 us" in lines[3]
    other = ratio_table([Timing("slow", (0.2,)), Timing("fast", (0.05,))], baseline="fast")
    assert other.splitlines()[1].split()[-1] == "0.25x"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup=-1), "warmup must be an int >= 0, got -1"),
        (dict(repeat=0), "repeat must be an int >= 1, got 0"),
        (dict(repeat=2.5), "repeat must be an int >= 1, got 2.5"),
    ],
)
def test_bad_counts_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        measure(lambda: None, **kwargs)
    with pytest.raises(ValueError, match=message):
        compare({"a": lambda: None}, **kwargs)


def test_bad_candidates_are_rejected():
    with pytest.raises(TypeError, match="fn must be callable, got int"):
        measure(3)
    with pytest.raises(ValueError, match="non-empty mapping"):
        compare({})
    with pytest.raises(TypeError, match=r"candidates\['b'\] must be callable"):
        compare({"a": lambda: None, "b": None})
    with pytest.raises(ValueError, match="baseline must be one of"):
        ratio_table([Timing("a", (1.0,))], baseline="z")


def test_peak_memory_measures_what_a_function_allocates():
    import torch

    from course_lib.bench import peak_memory

    allocated = peak_memory(lambda: torch.ones(16, 2**20))  # 64 MiB of float32
    assert 56 * 2**20 < allocated < 72 * 2**20
    assert peak_memory(lambda: torch.ones(4)) < 2 * 2**20
    with pytest.raises(TypeError, match="fn must be callable"):
        peak_memory(None)
