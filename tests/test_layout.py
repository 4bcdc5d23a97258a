"""The package's shape: layers import only downward, models run without Ray, only the Ray trainer
imports the Ray Train worker function, and the CLI's driver loads no TorchRec."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lifelong"
LAYERS = ["cluster", "data", "embeddings", "models", "trainers", "jobs"]  # each may import only those before it


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:  # `from a.b import c`: a.b, and a.b.c if a module
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("lifelong.")]


def test_no_layer_imports_a_layer_above_it():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0]
        if layer not in LAYERS:
            continue
        for module in _imports(path):
            target = module.split(".")[1]
            if target in LAYERS and LAYERS.index(target) > LAYERS.index(layer):
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, upward
    assert len(list(PACKAGE.rglob("*.py"))) > 40  # the scan did read the package


def test_only_the_ray_trainer_imports_the_worker_function():
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if "lifelong.trainers.worker" in _imports(p))
    assert importers == ["trainers/trainer.py"]


def test_models_and_their_batches_import_no_ray():
    code = ("import sys; import lifelong.models.zoo, lifelong.embeddings.batch, lifelong.trainers.model_setup; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cli_driver_loads_no_torchrec_or_models():
    """A `lifelong` command validates its run file and starts Ray Train without TorchRec (~2 s of
    imports here); the workers, `evaluate` and `shard-bench` load it when they build tables."""
    code = ("import sys; import lifelong.jobs.cli, lifelong.jobs.train, lifelong.jobs.prepare; "
            "heavy = ('torchrec', 'fbgemm_gpu', 'torchmetrics', 'lifelong.models.base', 'lifelong.trainers.worker'); "
            "print(sorted(m for m in sys.modules if m.startswith(heavy)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
