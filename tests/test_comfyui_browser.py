"""The pack in ComfyUI's real frontend, in a real browser (headless Chromium driven by Playwright).

Needs the server of ``tests/comfyui_server.py`` (``COMFYUI_DIR``), Playwright for Python
(``pip install playwright``; it uses the system Chromium, so never ``playwright install``) and
Chromium at ``/usr/bin/chromium`` (Debian's ``chromium`` package; ``CHROMIUM`` overrides the path).
Without them these tests are skipped, saying what is missing. The page has no internet: the
release feed is answered with ``[]`` and every other outside request is refused. Screenshots of
each step are saved in the test's temporary folder.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from comfyui_server import (CHROMIUM, CHROMIUM_ARGS, Frontend, api_workflow, requires_comfyui, skip_unless,
                            ui_workflow, workflow_names)
from node_names import NODE_NAMES

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None

pytestmark = [
    requires_comfyui,
    skip_unless(sync_playwright is not None, "Playwright is not installed: pip install playwright (it drives the "
                                             "system Chromium; `playwright install` is not needed)"),
    skip_unless(bool(shutil.which(CHROMIUM)), f"no Chromium at {CHROMIUM}: apt-get install chromium, or set CHROMIUM"),
]

WORKFLOWS = workflow_names()


@pytest.fixture(scope="module")
def frontend(comfyui, tmp_path_factory):
    shots = tmp_path_factory.mktemp("screenshots")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            front = Frontend(browser.new_page(viewport={"width": 1600, "height": 1000}), comfyui, shots)
            front.open()
            front.shot("start")
            yield front
        finally:
            browser.close()


def test_the_page_loads_without_errors_from_the_pack(frontend):
    registered = frontend.page.evaluate("ids => ids.filter(id => LiteGraph.registered_node_types[id])",
                                        list(NODE_NAMES))
    assert registered == list(NODE_NAMES)  # the frontend accepted every node definition
    assert frontend.ours() == [], frontend.ours()


@pytest.mark.parametrize("node_id", list(NODE_NAMES))
def test_the_node_search_finds_each_node_by_its_name(frontend, node_id):
    page, name = frontend.page, NODE_NAMES[node_id]
    frontend.reset()
    page.mouse.dblclick(800, 500)  # empty canvas: the node search box
    page.get_by_role("combobox").first.wait_for()
    page.keyboard.type(name)
    best = page.locator("ul[role=listbox][id$=_list] > li[role=option]").first
    expect(best).to_contain_text(name, timeout=60_000)
    best.click()
    page.wait_for_function("() => app.graph._nodes.length === 1")
    frontend.shot(f"search_{node_id}")
    assert page.evaluate("() => app.graph._nodes.map(n => n.type)") == [node_id]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_template_browser_lists_and_opens_each_workflow(frontend, name):
    """Main menu > Browse Templates > cradle2cane: a card with its thumbnail, which opens the graph."""
    page = frontend.page
    frontend.reset()
    page.locator(".comfyui-logo-wrapper").first.click()
    page.get_by_text("Browse Templates").first.click()
    page.get_by_role("option", name="cradle2cane").click()
    card = page.locator(f'[data-testid="template-workflow-{name}"]')
    thumbnail = card.locator("img").first
    thumbnail.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle())
    frontend.shot(f"templates_{name}")
    card.click()
    page.wait_for_function("n => app.graph._nodes.length === n", arg=len(ui_workflow(name)["nodes"]))
    assert sorted(page.evaluate("() => app.graph._nodes.map(n => n.type)")) == \
        sorted(n["type"] for n in ui_workflow(name)["nodes"])
    assert not [f for f in frontend.failed if "workflow_templates" in f], frontend.failed


def _loaded(frontend, name: str) -> dict:
    """Load a workflow as a user would drop it on the canvas; the graph as the frontend saves it."""
    frontend.reset()
    frontend.load(ui_workflow(name))
    return frontend.page.evaluate("() => app.graph.serialize()")


@pytest.mark.parametrize("name", WORKFLOWS)
def test_each_workflow_loads_complete_with_its_widget_values(frontend, name):
    graph = _loaded(frontend, name)
    frontend.shot(f"loaded_{name}")
    problems = frontend.page.evaluate("""() => app.graph._nodes.filter(
        n => !LiteGraph.registered_node_types[n.type] || n.has_errors).map(n => n.type)""")
    assert problems == []
    saved = {n["id"]: n.get("widgets_values") for n in graph["nodes"]}
    assert saved == {n["id"]: n.get("widgets_values") for n in ui_workflow(name)["nodes"]}


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_frontend_queues_exactly_the_api_twin(frontend, name):
    _loaded(frontend, name)
    prompt = frontend.page.evaluate("async () => (await app.graphToPrompt()).output")
    assert prompt == api_workflow(name), f"workflows/api/{name}.json differs from what the frontend queues"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_each_workflow_runs_from_the_run_button_and_shows_its_outputs(frontend, name):
    page, server = frontend.page, frontend.server
    graph = ui_workflow(name)
    _loaded(frontend, name)
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as queued:
        page.locator('[data-testid="queue-button"] button').first.click()
    answer = queued.value.json()
    assert "prompt_id" in answer, answer
    entry = server.wait(answer["prompt_id"])
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    outputs = [str(n["id"]) for n in graph["nodes"] if n["type"] in ("SaveImage", "PreviewImage", "SaveAnimatedWEBP")]
    expected = {node: len(entry["outputs"][node]["images"]) for node in outputs}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = page.evaluate("ids => ids.map(id => (app.nodeOutputs[id]?.images || []).length)", outputs)
        if dict(zip(outputs, shown)) == expected:
            break
        time.sleep(0.25)
    page.evaluate("() => app.canvas.setDirty(true, true)")
    frontend.shot(f"run_{name}")
    assert dict(zip(outputs, shown)) == expected and all(expected.values())
    assert frontend.ours() == [], frontend.ours()
