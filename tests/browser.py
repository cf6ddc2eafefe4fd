"""Open an HTML file in Debian's chromium (headless) and read back what rendered.

The page is copied with a small script that, after the load event, writes into the DOM how many images
decoded (naturalWidth > 0) and how many table rows exist; ``--dump-dom`` prints the DOM after that. The
report itself stays script-free. Without chromium the caller skips, except in CI (``CI`` set): fail.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0);
  const p = document.createElement('pre'); p.id = 'probe';
  p.textContent = `images=${imgs.length} decoded=${ok.length} tables=${document.querySelectorAll('table').length}`
    + ` rows=${document.querySelectorAll('tbody tr').length}`
    + ` widths=${ok.map(i => i.naturalWidth).join(',')}`;
  document.body.appendChild(p);
});</script>"""


def chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    if exe is None:
        msg = "Debian's chromium is not installed (make data-packages installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"{msg}; CI is set, so the browser check must run")
        pytest.skip(msg)
    return exe


def render(html_path: Path, tmp: Path) -> dict[str, object]:
    """{'images', 'decoded', 'tables', 'rows', 'widths', 'dom'} of the page as chromium rendered it."""
    exe = chromium()
    page = tmp / "probe.html"
    page.write_text(html_path.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    m = re.search(r"images=(\d+) decoded=(\d+) tables=(\d+) rows=(\d+) widths=([\d,]*)", r.stdout)
    assert m, f"probe not found in chromium's DOM (stderr: {r.stderr[-1000:]})"
    return {"images": int(m[1]), "decoded": int(m[2]), "tables": int(m[3]), "rows": int(m[4]),
            "widths": [int(w) for w in m[5].split(",") if w], "dom": r.stdout}
