"""Stand-in for what ComfyUI's frontend does when it queues a workflow: UI graph -> API prompt.

``ui_to_api(graph, object_info)`` follows the frontend's rules (ComfyUI 0.3.64, frontend 1.27):
widget inputs take their values from ``widgets_values`` in input order; an INT with
``control_after_generate`` (or, without the flag, an INT named ``seed``/``noise_seed``) and a
COMBO with ``image_upload`` carry one extra UI-only value; linked inputs become
``[source node id, output slot]``; muted (2) and bypassed (4) nodes are left out.
``CORE_NODE_INFO`` is ``/object_info`` of the core nodes the shipped workflows use (checked against
the real server by the integration test).
"""

from __future__ import annotations

from typing import Any, Iterator

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
HIDDEN_VALUE_FLAGS = ("image_upload", "video_upload", "animated_image_upload")

CORE_NODE_INFO: dict[str, dict[str, Any]] = {
    "LoadImage": {
        "input": {"required": {"image": [[], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"], "display_name": "Load Image"},
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "input_order": {"required": ["images", "filename_prefix"]},
        "output": [], "output_name": [], "display_name": "Save Image"},
    "PreviewImage": {
        "input": {"required": {"images": ["IMAGE"]}},
        "input_order": {"required": ["images"]},
        "output": [], "output_name": [], "display_name": "Preview Image"},
    "SaveAnimatedWEBP": {
        "input": {"required": {
            "images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
            "lossless": ["BOOLEAN", {"default": True}], "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
            "method": [["default", "fastest", "slowest"]]}},
        "input_order": {"required": ["images", "filename_prefix", "fps", "lossless", "quality", "method"]},
        "output": [], "output_name": [], "display_name": "SaveAnimatedWEBP"},
}


def _inputs(info: dict) -> Iterator[tuple[str, list]]:
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            yield name, info["input"][section][name]


def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return not _options(spec).get("forceInput") and (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES)


def ui_only_values(name: str, spec) -> int:
    """How many values the frontend keeps after this widget's own (control / upload widgets)."""
    options, kind = _options(spec), spec[0]
    control = options.get("control_after_generate")
    if control is None:
        control = kind == "INT" and name in ("seed", "noise_seed")
    return int(bool(control)) + sum(bool(options.get(flag)) for flag in HIDDEN_VALUE_FLAGS)


def widget_names(info: dict) -> list[str]:
    return [name for name, spec in _inputs(info) if is_widget(spec)]


def ui_to_api(graph: dict, object_info: dict[str, dict]) -> dict[str, dict]:
    links = {link[0]: link for link in graph["links"]}
    prompt: dict[str, dict] = {}
    for node in sorted(graph["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i["link"] for i in node.get("inputs", []) if i.get("link") is not None}
        inputs: dict[str, Any] = {}
        position = 0
        for name, spec in _inputs(info):
            if is_widget(spec):
                if position >= len(values):
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value for {name!r}")
                inputs[name] = values[position]
                position += 1 + ui_only_values(name, spec)
            if name in linked:
                link = links[linked[name]]
                inputs[name] = [str(link[1]), link[2]]
        if position != len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, the schema "
                             f"takes {position}")
        title = node.get("title") or info.get("display_name") or node["type"]
        prompt[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return prompt
