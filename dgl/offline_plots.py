"""The page `dvc plots show` and `dvc plots diff` write, made to work without internet.

dvc-render's own page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank. The
project ships `.dvc/plots/offline.html` instead (named in `.dvc/config` as `plots.html_template`):
the same page with those three libraries inlined, in the very versions dvc-render asks the CDN for
(and wide figures scaled to the window).
It has no `{scripts}` placeholder, so dvc-render adds no CDN tags. To rebuild it (after a
dvc-render upgrade changes the versions; needs npm and its registry):

    python -m dgl.offline_plots            # writes .dvc/plots/offline.html
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

from dgl.cli import entry_point
from dgl.errors import UserError
from dgl.files import atomic_write

TEMPLATE = Path(".dvc/plots/offline.html")
LIBRARIES = ("vega", "vega-lite", "vega-embed")
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Written by `python -m dgl.offline_plots`: {versions} inlined (BSD-3-Clause; their licences
         are at the end of this file), so the page needs no network. -->
{libraries}
    <style>
        table {
            border-spacing: 15px;
        }
        img {
            max-width: 100%;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
<!--
{licences}
-->
"""


def pinned_versions() -> dict[str, str]:
    """The versions of LIBRARIES that dvc-render's vega renderer loads from its CDN."""
    from dvc_render.vega import VegaRenderer

    found = dict(re.findall(r"npm/([a-z-]+)@([0-9.]+)", VegaRenderer.SCRIPTS))
    if set(found) != set(LIBRARIES):
        raise UserError(f"dvc-render's page loads {sorted(found)}, not {list(LIBRARIES)}; update dgl/offline_plots.py")
    return found


def build_page(build_files: dict[str, str], licences: dict[str, str], versions: dict[str, str]) -> str:
    """The page from each library's minified build and licence text."""
    for name, code in build_files.items():
        if "</script" in code.lower() or "<!--" in code:  # would end the inline script early
            raise UserError(f"{name}'s build holds '</script' or '<!--'; it cannot be inlined as it is")
    scripts = "\n".join(f"    <script>/* {n}@{versions[n]} */\n{build_files[n]}\n    </script>" for n in LIBRARIES)
    notices = "\n\n".join(f"{n}@{versions[n]}:\n{licences[n].replace('--', '- -')}" for n in LIBRARIES)
    page = PAGE
    for key, value in (
        ("{versions}", ", ".join(f"{n}@{versions[n]}" for n in LIBRARIES)),
        ("{licences}", notices),
        ("{libraries}", scripts),
    ):  # the libraries last: never re-scanned
        page = page.replace(key, value)
    return page


def fetch(versions: dict[str, str], work: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Each library's build/<name>.min.js and LICENSE, from its npm package (`npm pack`)."""
    specs = [f"{n}@{versions[n]}" for n in LIBRARIES]
    out = subprocess.run(["npm", "pack", "--silent", *specs], cwd=work, capture_output=True, text=True)
    if out.returncode != 0:
        raise UserError(
            f"npm pack {' '.join(specs)} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}; "
            "this needs npm and its registry"
        )
    builds, licences = {}, {}
    for name in LIBRARIES:
        with tarfile.open(work / f"{name}-{versions[name]}.tgz") as tar:
            builds[name] = tar.extractfile(f"package/build/{name}.min.js").read().decode()
            licences[name] = tar.extractfile("package/LICENSE").read().decode()
    return builds, licences


@entry_point
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=TEMPLATE)
    args = ap.parse_args()
    versions = pinned_versions()
    with tempfile.TemporaryDirectory() as work:
        builds, licences = fetch(versions, Path(work))
    atomic_write(args.out, build_page(builds, licences, versions))
    print(f"{args.out}: {', '.join(f'{n}@{v}' for n, v in versions.items())} inlined")


if __name__ == "__main__":
    main()
