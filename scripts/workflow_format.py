"""Workflow JSON in both of ComfyUI's formats: the UI format the front end saves (positional widget values,
links by id) and the API format the backend executes. ComfyUI's backend has no UI -> API converter, so the
tests use this one to execute every file in example_workflows/ and to check both forms agree.

    .venv/bin/python scripts/workflow_format.py     # regenerate example_workflows/*.json from api/*.json
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def input_spec(node_class):
    """[(name, type, options)] in the node's declared order (required, then optional)."""
    spec = node_class.INPUT_TYPES()
    out = []
    for group in ("required", "optional"):
        for name, value in spec.get(group, {}).items():
            kind, options = value[0], value[1] if len(value) > 1 else {}
            out.append((name, "COMBO" if isinstance(kind, list) else kind, options or {}))
    return out


def widget_names(node_class):
    """Widget inputs in widget order, with the extra 'control_after_generate' slot the front end adds."""
    names = []
    for name, kind, options in input_spec(node_class):
        if kind in WIDGET_TYPES:
            names.append(name)
            if options.get("control_after_generate") or name in ("seed", "noise_seed"):
                names.append(None)
    return names


def ui_to_api(ui, mappings):
    """UI-format workflow -> API-format prompt (muted and bypassed nodes are left out, as the front end does)."""
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4):
            continue
        cls = mappings[node["type"]]
        inputs = {}
        values = list(node.get("widgets_values", []))
        for name, value in zip(widget_names(cls), values):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def api_to_ui(prompt, mappings, columns=4):
    """API-format prompt -> UI-format workflow with a simple grid layout."""
    nodes, links = [], []
    outputs = {}
    for i, (node_id, node) in enumerate(prompt.items()):
        cls = mappings[node["class_type"]]
        slots, widgets = [], []
        for name, kind, _ in input_spec(cls):
            value = node["inputs"].get(name)
            if isinstance(value, list):
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), len(slots), kind])
                outputs.setdefault((value[0], value[1]), []).append(link_id)
                slots.append({"name": name, "type": kind, "link": link_id})
        for name in widget_names(cls):
            widgets.append("fixed" if name is None else node["inputs"][name])
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": [40 + 340 * (i % columns),
                      40 + 260 * (i // columns)], "size": [300, 120], "flags": {}, "order": i, "mode": 0,
                      "inputs": slots, "outputs": [], "title": node.get("_meta", {}).get("title", node["class_type"]),
                      "properties": {"Node name for S&R": node["class_type"], "cnr_id": "lazydit-gates",
                                     "ver": "0.1.0"},
                      "widgets_values": widgets})
    for node in nodes:
        cls = mappings[node["type"]]
        for slot, kind in enumerate(cls.RETURN_TYPES):
            node["outputs"].append({"name": kind, "type": kind, "slot_index": slot,
                                    "links": outputs.get((str(node["id"]), slot), [])})
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes,
            "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def main():
    from comfy_headless import Comfy
    comfy = Comfy(os.path.join(ROOT, "out", "comfy_base"))
    api_dir = os.path.join(ROOT, "example_workflows", "api")
    for name in sorted(os.listdir(api_dir)):
        prompt = json.load(open(os.path.join(api_dir, name)))
        ui = api_to_ui(prompt, comfy.nodes.NODE_CLASS_MAPPINGS)
        assert ui_to_api(ui, comfy.nodes.NODE_CLASS_MAPPINGS) == prompt, f"{name}: round trip differs"
        with open(os.path.join(ROOT, "example_workflows", name), "w") as f:
            json.dump(ui, f, indent=1)
        print(f"wrote example_workflows/{name}")


if __name__ == "__main__":
    main()
