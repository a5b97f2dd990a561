"""Serve a room: N Streamlit replicas of Sampling Lab behind one nginx, on this machine.

    .venv/bin/python -m deploy.room --replicas 2 --port 8080   # Ctrl-C stops everything

Each replica is `streamlit run app.py` on a free loopback port; all share one `server.cookieSecret`
(SAMPLING_LAB_COOKIE_SECRET, else a random one for this run, never printed). nginx (the Debian package:
`apt-get install -y nginx`) runs deploy/nginx.conf from a private run folder, in the foreground, as a
child of this process: session affinity by a cookie, the websocket upgraded, long read timeouts.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = Path(__file__).resolve().parent / "nginx.conf"


class RoomError(RuntimeError):
    """A replica or nginx did not start; the message says which and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise RoomError(f"{proc.args[0]} exited with {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RoomError(f"{url} did not answer within {timeout:g} s; see {log}")


def render_nginx_conf(run_dir: Path, listen: str, upstreams: list[str]) -> str:
    """deploy/nginx.conf with its three ${...} fields filled (nginx's own $variables are left alone)."""
    fields = {"RUN_DIR": str(run_dir), "LISTEN": listen, "SERVERS": "\n        ".join(f"server {u};" for u in upstreams)}
    lines = NGINX_CONF.read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith("#"))  # the header comment names the fields
    for key, value in fields.items():
        text = text.replace("${" + key + "}", value)
    if "${" in text:
        raise RoomError(f"{NGINX_CONF} has an unknown ${{...}} field")
    return text


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Room:
    url: str                                 # nginx, what visitors open
    replica_urls: list[str]                  # each replica directly (health checks, warm-up)
    run_dir: Path                            # nginx.conf, access.log, error.log, replica logs
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def access_log(self) -> Path:
        return self.run_dir / "access.log"

    def replica_pids(self) -> list[int]:
        return [p.pid for p in self.procs[:len(self.replica_urls)]]

    def stop(self) -> None:
        for proc in reversed(self.procs):    # nginx first, then the replicas
            _stop(proc)
        self.procs.clear()


def start_replica(port: int, secret: str, log: Path, env: dict[str, str] | None = None,
                  python: str = sys.executable) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            # the secret travels in the environment, not on a command line that `ps` shows
            env={**os.environ, "PYTHONUNBUFFERED": "1", "STREAMLIT_SERVER_COOKIE_SECRET": secret, **(env or {})})


def start_room(replicas: int = 2, port: int | None = None, host: str = "127.0.0.1",
               env: dict[str, str] | None = None, start_timeout: float = 120) -> Room:
    """Start the replicas and nginx; on any failure, stop what was started and raise RoomError."""
    nginx = find_nginx()
    if nginx is None:
        raise RoomError("nginx is not installed (Debian/Ubuntu: apt-get install -y nginx)")
    secret = os.environ.get("SAMPLING_LAB_COOKIE_SECRET") or secrets.token_hex(32)
    run_dir = Path(tempfile.mkdtemp(prefix="sampling-lab-room-"))
    ports = [free_port() for _ in range(replicas)]
    room = Room(f"http://{host}:{port or free_port(host)}", [f"http://127.0.0.1:{p}" for p in ports], run_dir)
    try:
        for i, p in enumerate(ports):
            room.procs.append(start_replica(p, secret, run_dir / f"replica{i + 1}.log", env))
        for i, (proc, url) in enumerate(zip(room.procs, room.replica_urls)):
            wait_http(url + "/_stcore/health", start_timeout, proc, run_dir / f"replica{i + 1}.log")
        conf = run_dir / "nginx.conf"
        listen = room.url.removeprefix("http://")
        conf.write_text(render_nginx_conf(run_dir, listen, [u.removeprefix("http://") for u in room.replica_urls]))
        room.procs.append(subprocess.Popen([nginx, "-e", str(run_dir / "error.log"), "-p", str(run_dir),
                                            "-c", str(conf), "-g", "daemon off;"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(room.url + "/_stcore/health", 30, room.procs[-1], run_dir / "error.log")
    except BaseException:
        room.stop()
        raise
    return room


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--port", type=int, default=8080, help="nginx's port")
    ap.add_argument("--host", default="127.0.0.1", help="nginx's address (0.0.0.0 to serve the network)")
    args = ap.parse_args()
    room = start_room(args.replicas, args.port, args.host)
    print(f"Sampling Lab at {room.url} ({args.replicas} replicas: {', '.join(room.replica_urls)}); "
          f"logs in {room.run_dir}. Ctrl-C stops.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        room.stop()


if __name__ == "__main__":
    main()
