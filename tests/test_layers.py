"""Every import points down: each top-level package sits on a floor and imports only packages on floors below it
(parsed with `ast`, nothing is imported). Floors and reasons: README.md "Layers"."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module or package -> floor; the longest matching name wins
LAYERS = {
    "common": 0,  # errors, torch process set-up, progress, config building
    "manifests": 1,  # schemas, manifest I/O, splits, action semantics, the shard format
    "media": 2,  # format codecs: TFRecord, frames in TFRecord episodes, HDF5 image datasets
    "catalog": 2,  # the DuckDB catalog
    "flow_extraction": 3,  # flow backends, frame streaming, the flow artifact
    "sources": 3,  # source adapters: discover and probe items, read their actions (the VAE and the audit read them here)
    "latent_action_vae": 4,
    "training_hooks": 4,
    "samples": 4,  # the sample-pyramid generator: datasets in each tier's official layout, for the demo, tests, benches
    "pipelines": 5,  # stages, driver, runners, jobs
    "audit": 6,  # reads what the pipeline wrote, with the pipeline's config and readers
    "jobs": 7,  # entry points: the CLI, the demo, the VAE jobs (they leave the audit's flagged items out)
}

# Upward imports that remain for now, each to be removed (and then deleted here; a stale entry fails the test).
# (importing file, imported module)
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def layer_of(module: str) -> tuple[str, int] | None:
    """(the LAYERS entry, its floor) for a dotted module name, or None for a module that is not ours."""
    best = None
    for name, floor in LAYERS.items():
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[0])):
            best = (name, floor)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file, function-level and TYPE_CHECKING ones included."""
    module = module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:  # `from jobs import cli` imports jobs.cli
                sub = f"{base}.{a.name}"
                found = layer_of(sub)
                out.append((node.lineno, sub if found and found[0] == sub else base))
    return out


def packages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").exists() and p.name != "tests")


def upward_imports(root: Path) -> list[tuple[str, int, str, str]]:
    """(file, line, imported module, why) for every import of a floor above the importing module's (or of another
    package on the same floor)."""
    found = []
    for pkg in packages(root):
        if pkg not in LAYERS:
            continue  # test_every_package_has_a_floor names it
        for path in sorted((root / pkg).rglob("*.py")):
            src_name, src_floor = layer_of(module_name(path, root))
            for line, target in imports(path, root):
                hit = layer_of(target)
                if hit is None:
                    continue
                tgt_name, tgt_floor = hit
                other_package = target.split(".")[0] != pkg
                if tgt_floor > src_floor or (other_package and tgt_floor == src_floor):
                    why = f"{tgt_name} (floor {tgt_floor}) from {src_name} (floor {src_floor})"
                    found.append((path.relative_to(root).as_posix(), line, target, why))
    return found


def test_every_package_has_a_floor():
    missing = [p for p in packages(ROOT) if p not in LAYERS]
    assert not missing, f"new top-level package(s) {missing}: give each a floor in LAYERS (tests/test_layers.py)"


def test_no_package_imports_one_above_it():
    found = upward_imports(ROOT)
    new = [f"{f}:{line} imports {target}: {why}" for f, line, target, why in found
           if (f, target) not in ALLOWED_UPWARD]
    assert not new, "imports that point up:\n" + "\n".join(new)
    stale = ALLOWED_UPWARD - {(f, target) for f, _, target, _ in found}
    assert not stale, f"allowed upward imports that are gone (delete them from ALLOWED_UPWARD): {sorted(stale)}"


def test_the_check_names_the_file_and_the_import(tmp_path):
    """A bottom package reaching up, directly, relatively and inside a function, is reported; downward is not."""
    for pkg in ("common", "flow_extraction", "pipelines", "pipelines/sources", "jobs"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "flow_extraction" / "frames.py").write_text(
        "from common.errors import BadInput\n"
        "def f():\n    from pipelines.sources import oxe\n")
    (tmp_path / "jobs" / "cli.py").write_text("import flow_extraction.frames\nfrom pipelines import sources\n")
    (tmp_path / "pipelines" / "sources" / "x.py").write_text("from .. import driver\nfrom jobs import cli\n")
    found = {(f, line, target) for f, line, target, _ in upward_imports(tmp_path)}
    assert found == {("flow_extraction/frames.py", 3, "pipelines.sources"),  # floor 5 from floor 3
                     ("pipelines/sources/x.py", 2, "jobs")}  # an entry point from below it
