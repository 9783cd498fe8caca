"""The torchvision shim: torchvision imports after the hook both where its compiled ops cannot load (CPU torch with
the CUDA torchvision wheel: the shim defines the op schemas) and where they can (a matching CUDA build: the shim
must stay out, or the ops' own registration aborts the process; seen on the H200, issue 16 item 5)."""

import subprocess
import sys

CODE = """
import common.torch_compat as tc
tc.install_import_hook()
import torchvision, torch
torch.ops.torchvision.nms  # the op schema exists either way
loaded = tc._torchvision_ops_load()
print("shim" if tc._SHIM_LIB is not None else "real", loaded)
assert (tc._SHIM_LIB is None) == loaded, "the shim ran although the compiled ops load (or the reverse)"
"""


def test_torchvision_imports_after_the_hook():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] in ("shim", "real")


THIRD_PARTY = """
import site, sys
if len(sys.argv) > 1:
    site.addsitedir(sys.argv[1])  # processes the folder's .pth files exactly as interpreter start-up does
import transformers
transformers.AutoProcessor  # resolves the lazy module; it imports torchvision's transforms
import torchvision, torch
print(torchvision.transforms.v2.Resize(4)(torch.zeros(3, 8, 8)).shape[-1])
"""


def test_third_party_code_imports_torchvision_in_our_venv_without_our_packages(tmp_path):
    """The bootstrap's `install-pth` hook: a process that imports only transformers gets torchvision working."""
    import common.torch_compat as tc

    site_dir = tmp_path / "site"
    site_dir.mkdir()
    made = subprocess.run([sys.executable, "-m", "common.torch_compat", "install-pth", str(site_dir)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    assert (site_dir / tc.PTH_NAME).read_text() == tc.PTH_LINE
    # `-S`: the venv's own .pth files (the bootstrap writes this very hook there) must not decide the outcome; the
    # venv's packages and our source tree go on sys.path as plain folders, only `site_dir`'s .pth is processed
    import site
    from pathlib import Path

    paths = [*site.getsitepackages(), str(Path(tc.__file__).resolve().parents[1])]
    prelude = f"import sys; sys.path.extend({paths!r})\n"
    ok = subprocess.run([sys.executable, "-S", "-c", prelude + THIRD_PARTY, str(site_dir)], capture_output=True,
                        text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert ok.stdout.split()[-1] == "4"
    if not tc._torchvision_ops_load():  # the CUDA torchvision wheel on CPU torch: without the hook it fails
        bare = subprocess.run([sys.executable, "-S", "-c", prelude + THIRD_PARTY], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert bare.returncode != 0 and "torchvision::nms does not exist" in bare.stderr
