import os

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray per test module (2 training workers plus room for Ray Data tasks)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
