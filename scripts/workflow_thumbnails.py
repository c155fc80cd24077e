"""Redraw the template browser's thumbnails, workflows/<name>.jpg: each graph as ComfyUI's frontend
draws it (before it runs, so the only picture in it is the input photo).

    COMFYUI_DIR=... COMFYUI_PYTHON=... python scripts/workflow_thumbnails.py

Starts the test server of tests/comfyui_server.py (a ComfyUI with this pack and the tiny model set),
opens each workflow in headless Chromium at 100 % zoom, takes the canvas pixels and pads them to
the 4:3 card. Needs what the browser tests need (Playwright, Chromium).
"""

from __future__ import annotations

import base64
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfyui_server import (CHROMIUM, CHROMIUM_ARGS, WORKFLOWS, Frontend, running_server,  # noqa: E402
                            ui_workflow, workflow_names)

MARGIN = 40  # canvas pixels around the nodes
TITLE = 30  # node titles are drawn above a node's position
WIDTH, ASPECT, QUALITY = 800, 4 / 3, 88

DRAW = """([left, top]) => {
    app.canvas.show_info = false;
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [-left, -top];
    app.canvas.setDirty(true, true);
    app.canvas.draw(true, true);
    return app.canvas.canvas.toDataURL("image/png");
}"""


def bounds(graph: dict) -> tuple[int, int, int, int]:
    """Left, top, width, height of a graph's nodes (titles and a margin included), in canvas units."""
    left = min(n["pos"][0] for n in graph["nodes"]) - MARGIN
    top = min(n["pos"][1] for n in graph["nodes"]) - TITLE - MARGIN
    right = max(n["pos"][0] + n["size"][0] for n in graph["nodes"]) + MARGIN
    bottom = max(n["pos"][1] + n["size"][1] for n in graph["nodes"]) + MARGIN
    return int(left), int(top), int(right - left), int(bottom - top)


def thumbnail(frontend: Frontend, name: str):
    from PIL import Image

    graph = ui_workflow(name)
    left, top, width, height = bounds(graph)
    frontend.page.set_viewport_size({"width": width + 200, "height": height + 200})  # room for the side bars
    frontend.page.wait_for_function("([w, h]) => app.canvas.canvas.width >= w && app.canvas.canvas.height >= h",
                                    arg=[width, height])
    frontend.load(graph)
    frontend.page.wait_for_function(  # the Load Image preview (the input photo) has arrived
        "() => app.graph._nodes.every(n => n.type !== 'LoadImage' || (n.imgs?.[0]?.complete && n.imgs[0].naturalWidth))")
    data = frontend.page.evaluate(DRAW, [left, top])
    drawn = Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB").crop((0, 0, width, height))
    card = Image.new("RGB", (max(width, round(height * ASPECT)), max(height, round(width / ASPECT))),
                     drawn.getpixel((1, 1)))  # the canvas background
    card.paste(drawn, ((card.width - width) // 2, (card.height - height) // 2))
    return card.resize((WIDTH, round(WIDTH / ASPECT)), Image.LANCZOS)


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="c2c-thumbnails-") as tmp, running_server(Path(tmp)) as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        frontend = Frontend(browser.new_page(), server, Path(tmp))
        frontend.open()
        for name in workflow_names():
            path = WORKFLOWS / f"{name}.jpg"
            thumbnail(frontend, name).save(path, quality=QUALITY, optimize=True)
            print(f"wrote {path.relative_to(ROOT)}")
        browser.close()


if __name__ == "__main__":
    main()
