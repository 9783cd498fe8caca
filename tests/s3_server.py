"""A real S3-protocol server on localhost for tests: moto's standalone server (`python -m moto.server`) in its own
process on a free port, so Ray and Beam workers reach it over HTTP like a real store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing

# fake credentials: moto accepts any; tests check they never reach logs or the catalog
ACCESS_KEY = "AKIATESTPYRAMID0001"
SECRET_KEY = "pyramid-test-secret-d0-not-log"


def moto_available() -> str | None:
    """None when moto's server can run here, else why not."""
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        return f"moto[server] and s3fs are needed for the object-storage tests ({exc})"
    return None


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self, log_path):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on {self.endpoint} (log: {log_path})")
                time.sleep(0.2)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
