import pytest

from dpmed.bench.store import ResultsStore
from dpmed.bench.sweep import Sweep

EPOCHS = [
    {"epoch": e, "metrics": {"train": {"accuracy": 0.5, "loss": 1.0}, "test": {"accuracy": 0.6}}}
    for e in (1, 2)
]


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    yield store
    store.close()


def _runs():
    return Sweep.from_mapping({"base": {}, "grid": {"seed": [0, 1]}}, name="s").runs()


def test_a_run_goes_pending_running_finished_with_its_epochs(store):
    a, b = _runs()
    store.plan([a, b])
    assert store.status([a.id, b.id]) == {a.id: "pending", b.id: "pending"}
    store.start(a.id)
    store.finish(a.id, {"test": {"accuracy": 0.6}}, EPOCHS)
    assert store.status([a.id])[a.id] == "finished"
    assert len(store.epochs(a.id)) == 6
    [finished] = store.finished_runs()
    assert finished["summary"]["test"]["accuracy"] == 0.6 and finished["config"]["seed"] == 0
    store.plan([a, b])  # planning again keeps what is known
    assert store.counts() == {"finished": 1, "pending": 1}


def test_finish_is_all_or_nothing(store):
    [a, _] = _runs()
    store.plan([a])
    store.start(a.id)
    broken = EPOCHS + [{"epoch": 3, "metrics": {"test": None}}]  # fails half-way through
    with pytest.raises(AttributeError):
        store.finish(a.id, {"test": {}}, broken)
    assert store.status([a.id])[a.id] == "running" and store.epochs(a.id) == []


def test_failures_keep_their_error(store):
    [a, _] = _runs()
    store.plan([a])
    store.fail(a.id, "DataError: no data")
    row = store.db.execute("SELECT status, error FROM runs").fetchone()
    assert row == ("failed", "DataError: no data")
