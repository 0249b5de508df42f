"""JupyterLab and headless Chromium for the real-browser tests, both kept offline and out of $HOME.

    with JupyterLab(root, home) as lab, OfflineChromium(home / "chromium", lab.origin) as browser:
        browser.driver.get(lab.url("lab/tree/notebooks/infer.ipynb"))

`JupyterLab` starts `jupyter lab` from this interpreter's environment on 127.0.0.1 (a free port, no token,
`window.jupyterapp` exposed) with every Jupyter/IPython folder inside `home`, and nothing that fetches from the
internet: no news feed, no update check, the read-only extension manager (no PyPI look-ups). It shuts the server
down through its API (which stops the kernels it started) and, failing that, terminates it.

`OfflineChromium` is Debian's chromium + chromium-driver through Selenium, as in test_reports_offline_in_chromium.py,
except that JupyterLab on 127.0.0.1 must stay reachable: no host name resolves (127.0.0.1 is an address, never
resolved), every other request goes to a closed proxy port (loopback bypasses proxies), https/wss are blocked at
the DevTools level, and every request and WebSocket the page makes is recorded from the DevTools performance log,
so a test can assert that none left `origin`. The console log is recorded too.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MISSING_CHROMIUM = (
    None
    if CHROMIUM and DRIVER
    else "Chromium not found (apt-get install chromium chromium-driver): the real-browser test did not run"
)
# What a page may load without leaving the machine, besides `origin`: inline and in-memory urls, and Chromium's
# own pages served from the browser itself (its new-tab page, chrome:// and chrome-untrusted://new-tab-page/...,
# loads before the first navigation).
LOCAL_SCHEMES = ("data:", "blob:", "about:", "chrome:", "chrome-untrusted:", "chrome-extension:", "devtools:")

# JupyterLab user settings written into JUPYTERLAB_SETTINGS_DIR: never ask about, nor fetch, Jupyter news and
# never check for updates (both would make the page, or the server for it, request jupyterlab.github.io).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_opener(cookies: http.cookiejar.CookieJar | None = None):
    """urllib without any proxy from the environment (the server is on 127.0.0.1), keeping `cookies`."""
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(cookies)
    )


class _Started:
    """`with X(...) as x:` starts x and always stops it, also when starting fails half-way."""

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class JupyterLab(_Started):
    """`jupyter lab` serving `root`; every folder Jupyter, IPython or matplotlib writes to is under `home`."""

    def __init__(self, root: Path, home: Path, startup_timeout: float = 120.0):
        self.root, self.home, self.startup_timeout = Path(root), Path(home), startup_timeout
        self.port = free_port()
        self.origin = f"http://127.0.0.1:{self.port}"
        self.log_path = self.home / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "JUPYTER_CONFIG_DIR": str(self.home / "config"),
            "JUPYTER_DATA_DIR": str(self.home / "data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "runtime"),
            "JUPYTERLAB_SETTINGS_DIR": str(self.home / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.home / "lab-workspaces"),
            "IPYTHONDIR": str(self.home / "ipython"),
            "MPLCONFIGDIR": str(self.home / "matplotlib"),
            "JUPYTER_PLATFORM_DIRS": "0",
            "PYTHONUNBUFFERED": "1",
        }
        for variable in ("JUPYTER_PATH", "JUPYTER_TOKEN", "JUPYTER_PREFER_ENV_PATH"):
            self.env.pop(variable, None)

    def url(self, path: str = "") -> str:
        return f"{self.origin}/{path.lstrip('/')}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            f"--ServerApp.root_dir={self.root}",
            "--IdentityProvider.token=",
            "--ServerApp.password=",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands, read the kernel status
            "--LabApp.news_url=None",  # no announcements feed from jupyterlab.github.io
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",  # no PyPI version check
            "--LabApp.extension_manager=readonly",  # no PyPI search or install
            "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip

    def start(self) -> JupyterLab:
        for folder in (
            "config",
            "data",
            "runtime",
            "lab-settings",
            "lab-workspaces",
            "ipython",
            "matplotlib",
        ):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        for name, values in LAB_SETTINGS.items():
            path = self.home / "lab-settings" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            self.command(), cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.process.returncode} before it served:\n{self.log_tail()}"
                )
            try:
                with _local_opener().open(self.url("api/status"), timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"jupyter lab did not answer on {self.origin} within {self.startup_timeout:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the server down through its API (it shuts its kernels down first), else terminate, else kill."""
        if self.process is None or self.process.poll() is not None:
            return
        try:  # a POST needs the _xsrf cookie the server sets on a page, echoed in a header
            cookies = http.cookiejar.CookieJar()
            opener = _local_opener(cookies)
            opener.open(self.url("lab"), timeout=10).close()
            xsrf = next((c.value for c in cookies if c.name == "_xsrf"), "")
            request = urllib.request.Request(
                self.url("api/shutdown"), method="POST", data=b"", headers={"X-XSRFToken": xsrf}
            )
            opener.open(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass
        try:
            self.process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        self.process.terminate()  # SIGTERM: jupyter_server still shuts its kernels down
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"


class OfflineChromium(_Started):
    """Headless Chromium (through chromedriver) that can reach `origin` and nothing else; see the module docstring.

    `requests()`, `websockets()` and `console()` return everything seen since the start (the DevTools logs are read
    and kept on each call, since reading them empties chromedriver's buffers)."""

    def __init__(self, profile_dir: Path, origin: str | None, window: str = "1400,1200"):
        # origin None: no server at all (file:// pages, which may then read each other's files)
        self.profile_dir, self.origin, self.window = Path(profile_dir), origin, window
        self.driver = None
        self._requests: list[str] = []
        self._websockets: list[str] = []
        self._console: list[dict] = []

    def start(self) -> OfflineChromium:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile_dir.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--disable-gpu",
            f"--window-size={self.window}",
            f"--user-data-dir={self.profile_dir / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",  # a closed port; loopback addresses bypass it
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-crash-reporter",
            "--disable-breakpad",
            *(["--allow-file-access-from-files"] if self.origin is None else []),
        ):
            options.add_argument(argument)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        home = (
            self.profile_dir / "home"
        )  # Chromium's crash-report settings and dconf land under $HOME otherwise
        environment = {
            **os.environ,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
        }
        service = Service(
            DRIVER, log_output=str(self.profile_dir.parent / "chromedriver.log"), env=environment
        )
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.execute_cdp_cmd("Network.enable", {})
        blocked = [
            "https://*",
            "wss://*",
            "ftp://*",
            *(["http://*", "ws://*"] if self.origin is None else []),
        ]
        self.driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": blocked})
        return self

    def _drain(self) -> None:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            method, params = message.get("method"), message.get("params", {})
            if method == "Network.requestWillBeSent":
                self._requests.append(params["request"]["url"])
            elif method == "Network.webSocketCreated":
                self._websockets.append(params["url"])
        self._console.extend(self.driver.get_log("browser"))

    def requests(self) -> list[str]:
        self._drain()
        return list(self._requests)

    def websockets(self) -> list[str]:
        self._drain()
        return list(self._websockets)

    def console(self) -> list[dict]:
        self._drain()
        return list(self._console)

    def outside(self) -> list[str]:
        """Every url the page requested or opened a WebSocket to that is neither on `origin` nor local."""
        if self.origin is None:
            allowed = ("file:", *LOCAL_SCHEMES)
        else:
            allowed = (self.origin + "/", "ws" + self.origin[len("http") :] + "/", *LOCAL_SCHEMES)
        return [url for url in self.requests() + self.websockets() if not url.startswith(allowed)]

    def stop(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()  # closes Chromium and stops chromedriver
            finally:
                self.driver = None
