"""Renders docs/dashboard.png: the dashboard over 30 days of synthetic traffic, in headless Chromium.

    python scripts/dashboard_screenshot.py [--out docs/dashboard.png] [--requests 20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from gateway.app import create_app
from gateway.settings import Settings
from ledger import Database
from ledger.synthetic import synthetic_records

MASTER = "sk-screenshot-master-key"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/ledger.db")
        db.migrate()
        db.insert_records(list(synthetic_records(args.requests, end=datetime.now(UTC))))
        db.dispose()
        config = Path(tmp) / "draftgate.yaml"
        config.write_text(f'master_key: {MASTER}\ndatabase_url: "sqlite:///{tmp}/ledger.db"\nlocal:\n  enabled: false\n')
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(Settings(config=config, data_dir=Path(tmp))),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1160, "height": 900}, device_scale_factor=1)
                page.goto(f"http://127.0.0.1:{port}/dashboard")
                page.fill("#key", MASTER)
                page.click("#login")
                page.wait_for_selector("#spend-chart")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
