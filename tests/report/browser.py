"""A report page in a real browser: headless Chromium renders ``report.html`` and we check what a reader
would see: every image loads, the console stays silent, nothing is wider than the window. A screenshot is
kept next to the test's files to look at.

Chromium comes from the distribution's packages (``scripts/test.sh`` installs it when it is missing and can);
without it these checks fail loudly rather than skip: a report nobody looked at is not tested.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]
WIDTH, HEIGHT = 1280, 900

# Injected into a copy of the page (never into the report itself): records errors and, after every image
# has loaded or failed, the broken images and the page's width in a <pre id="__probe"> for --dump-dom.
PROBE = """<script>
window.__errors = [];
(function () {
  var orig = console.error;
  console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, ' ')); orig.apply(console, arguments); };
  var origw = console.warn;
  console.warn = function () { window.__errors.push('warning: ' + Array.prototype.join.call(arguments, ' ')); origw.apply(console, arguments); };
  window.addEventListener('error', function (e) {
    var t = e.target || {};
    window.__errors.push('error: ' + (e.message || t.src || t.href || 'resource failed'));
  }, true);
  window.addEventListener('load', function () {
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                     .map(function (i) { return i.getAttribute('src'); });
    var r = {images: imgs.length, broken: broken, errors: window.__errors,
             scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
             sections: Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; })};
    var pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(r);
    document.body.appendChild(pre);
  });
})();
</script>"""


class ChromiumMissing(RuntimeError):
    pass


def chromium() -> str:
    """Path of the Chromium binary; :class:`ChromiumMissing` (with what to do) when there is none."""
    for name in (os.environ.get("XR0_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise ChromiumMissing("headless Chromium is needed to check report.html in a real browser and none was found: "
                          "`apt-get update && apt-get install -y chromium` (scripts/test.sh does this when it runs "
                          "as root with the package registry reachable), or set XR0_CHROMIUM to a Chrome binary")


@dataclass
class PageCheck:
    images: int
    broken: list[str]
    errors: list[str]
    scroll_width: int
    inner_width: int
    sections: list[str]
    screenshot: Path

    def problems(self) -> list[str]:
        out = [f"broken image: {b}" for b in self.broken]
        out += [f"console: {e}" for e in self.errors]
        if self.scroll_width > self.inner_width:
            out.append(f"page is {self.scroll_width} px wide in a {self.inner_width} px window")
        return out


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def check_page(report: Path, work: Path) -> PageCheck:
    """Render ``report`` (an HTML file with its PNGs beside it) and measure it; files go under ``work``."""
    exe = chromium()
    report = Path(report).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # A copy beside the PNGs so relative paths resolve exactly as in the real folder.
    probe = report.with_name(".probe-" + report.name)
    text = report.read_text()
    probe.write_text(re.sub(r"<head>", "<head>" + PROBE, text, count=1))
    profile = work / "chromium-profile"
    common = FLAGS + [f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "--hide-scrollbars"]
    try:
        dom = _run([exe, *common, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink(missing_ok=True)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dom.stdout, re.S)
    if not m:
        raise AssertionError(f"Chromium did not render the page (rc {dom.returncode}): {dom.stderr[-2000:]}")
    import html as _html

    r = json.loads(_html.unescape(m.group(1)))
    shot = work / (report.parent.name + "-" + report.stem + ".png")
    # The unmodified page: its own console must stay silent (Chromium logs console messages to stderr).
    tall = _run([exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},3000", "--hide-scrollbars",
                 "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", report.as_uri()])
    console = [ln for ln in tall.stderr.splitlines() if ":CONSOLE" in ln]
    if not shot.is_file():
        raise AssertionError(f"Chromium wrote no screenshot (rc {tall.returncode}): {tall.stderr[-2000:]}")
    return PageCheck(images=r["images"], broken=r["broken"], errors=r["errors"] + console,
                     scroll_width=r["scrollWidth"], inner_width=r["innerWidth"], sections=r["sections"],
                     screenshot=shot)
