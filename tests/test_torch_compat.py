"""The torchvision shim: torchvision imports after the hook both where its compiled ops cannot load (CPU torch with
the CUDA torchvision wheel: the shim defines the op schemas) and where they can (a matching CUDA build: the shim
must stay out, or the ops' own registration aborts the process; seen on the H200, issue 16 item 5)."""

import subprocess
import sys

CODE = """
import pipelines.torch_compat as tc
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
