import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test files share the 2 cores: a torch op's second OpenMP thread would wait on a core the
    # other file's Ray workers hold (a 7 s in-process training test took 99 s beside two busy
    # processes with 2 threads, 28 s with 1). Set before torch is first imported in this process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def _ray_session():
    """Shuts the shared embedded Ray down at the end of the session (see `ray_local`)."""
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(_ray_session):
    """The embedded Ray the Ray tests of this pytest process share (2 training workers plus room for
    Ray Data tasks), with lifelong's local start-up settings; started by the first module that asks,
    and again after a test stopped it (job submit, the two-node cluster, recovery): a start and stop
    cost ~5 s. Each xdist worker has its own ("local": never one that `ray start` left here)."""
    import ray

    from lifelong.cluster.connect import start_local

    if not ray.is_initialized():
        start_local(num_cpus=4, log_to_driver=False)
    yield ray


# The suite runs on two pytest-xdist workers, a file per worker at a time (`--dist loadfile`). Files
# are handed out in this order, slowest first (seconds per file as printed at the end of a run), so
# that no long file starts last while the other worker idles; files not named follow in their order.
SLOWEST_FIRST = ("test_readme.py", "test_recovery.py", "test_tune.py", "test_ray_zoo.py", "test_ray.py",
                 "test_job_submit.py", "test_multinode.py", "test_planted.py",
                 "test_sharded_parity.py", "test_key_cache.py", "test_training.py", "test_console.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sum setup, call and teardown time per test file (printed at the end of the run)."""
    path = report.nodeid.split("::")[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    """Seconds per test file, slowest first: where the suite's time goes."""
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per test file")
    for path, s in sorted(_FILE_SECONDS.items(), key=lambda kv: -kv[1]):
        terminalreporter.write_line(f"{s:8.1f}  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f}  in all")
