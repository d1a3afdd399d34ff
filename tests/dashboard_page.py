"""What the browser tests measure on a page, as JavaScript run in it (tests/test_dashboard_browser.py).

Kept apart from the tests so each check reads as one line there: text contrast (WCAG 2 relative luminance,
4.5:1 for text, 3:1 for large text), horizontal overflow (the page, and any panel whose content spills
over its edge into the next one), markup that data could have injected, and CSP violations.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Every CSP violation is recorded (add_init_script runs through the debugger protocol, not as page script).
RECORD_CSP = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
              "(e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));")

CONTRAST = """() => {
  const parse = (c) => { const m = /rgba?\\(([^)]+)\\)/.exec(c || ''); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0.5) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const bad = [];
  const seen = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || !el || seen.has(el)) continue;
    seen.add(el);
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!box.width || !box.height || style.visibility === 'hidden' || el.closest('option, title')) continue;
    const svg = el instanceof SVGElement;
    const fg = parse(svg ? style.fill : style.color);
    let bg = background(svg ? el.closest('svg') : el);
    const node = svg && el.closest('g.node');
    if (node && el.classList.contains('id')) bg = parse(getComputedStyle(node.querySelector('circle.dot')).fill);
    if (!fg || !bg) continue;
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize), weight = Number(style.fontWeight) || 400;
    const large = size >= 24 || (size >= 18.66 && weight >= 700);
    const what = `${el.tagName}.${el.getAttribute('class') || ''} "${el.textContent.trim().slice(0, 30)}"`;
    if (ratio < (large ? 3 : 4.5)) bad.push(`${ratio.toFixed(2)}:1 ${what}`);
  }
  return bad;
}"""

OVERFLOW = """(wide) => {
  const out = [];
  const doc = document.documentElement;
  if (doc.scrollWidth > window.innerWidth + 1) out.push(`page ${doc.scrollWidth}px in ${window.innerWidth}px`);
  for (const panel of document.querySelectorAll('.panel')) {
    const name = panel.id || panel.querySelector('h2')?.textContent || '?';
    const [used, room] = [panel.scrollWidth, panel.clientWidth];
    if (used > room + 1) out.push(`panel ${name}: ${used}px in ${room}px`);
  }
  if (wide) {  // on a wide screen every column of every table is in view, none scrolled out of its panel
    for (const wrap of document.querySelectorAll('.table-wrap')) {
      const name = wrap.querySelector('table')?.id || '?';
      const [used, room] = [wrap.scrollWidth, wrap.clientWidth];
      if (used > room + 1) out.push(`table ${name}: ${used}px in ${room}px`);
    }
  }
  return out;
}"""

INJECTED = """() => {
  const handlers = [...document.querySelectorAll('*')].flatMap((el) => [...el.attributes]
    .filter((a) => a.name.startsWith('on')).map((a) => `${el.tagName}[${a.name}]`));
  return {pwned: window.__pwned ?? null, images: document.querySelectorAll('img, script:not([src]), iframe').length,
          handlers, csp: window.__csp || []};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"agentq serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer in {seconds}s")


class Serve:
    """`agentq serve` on 127.0.0.1 and a free port, its output in a file (the log the token test reads)."""

    def __init__(self, store: Path, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "agentq.cli", "serve", "--store", str(store), "--port",
                                      str(self.port), *args], env={**os.environ, **(env or {})},
                                     stdout=self._out, stderr=subprocess.STDOUT)
        try:
            wait_for(f"{self.url}/healthz", self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self._out.close()


def keep(shot: Path, name: str) -> None:
    """Copy a screenshot to AGENTQ_SCREENSHOT_DIR (docs/ keeps the ones the docs show)."""
    target = os.environ.get("AGENTQ_SCREENSHOT_DIR")
    if target:
        shutil.copyfile(shot, Path(target) / name)
