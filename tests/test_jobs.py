"""Slurm job ids and states: the consolidated rows of pending array tasks are expanded."""

from __future__ import annotations

from xpkit._parallel._jobs import expand_ids, job_ranges, job_states


def test_expand_ids_reads_slurm_array_ranges() -> None:
    """``123_[0-2,7%2]`` is four tasks; a plain job id and an array task stay as they are."""
    assert expand_ids("123_[0-2,7%2]") == ["123_0", "123_1", "123_2", "123_7"]
    assert expand_ids("123_[5]") == ["123_5"]
    assert expand_ids("123_4") == ["123_4"]
    assert expand_ids("123") == ["123"]
    assert expand_ids("") == []


def test_expand_ids_ignores_what_it_cannot_read() -> None:
    """A malformed range yields no id rather than a wrong one or an exception."""
    assert expand_ids("123_[a-b]") == []
    assert expand_ids("123_[3-x,5]") == ["123_5"]


def test_job_states_of_nothing_asks_nothing() -> None:
    """No job: an empty answer without running a command."""
    assert job_states([]) == {}


def test_job_ranges_are_what_expand_ids_reads_back() -> None:
    """Many array tasks are written in Slurm's short form, and read back to the same ids."""
    ids = [f"683_{i}" for i in range(1000)] + ["700_0", "700_1", "700_5", "812"]
    shown = job_ranges(ids)
    assert shown == "812, 683_[0-999], 700_[0-1,5]"
    assert [j for part in shown.split(", ") for j in expand_ids(part)] == [
        "812",
        *ids[:-1],
    ]
