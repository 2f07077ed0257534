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


# Node sizes as ComfyUI's front end computes them (1.32, litegraph): 20 px per input/output slot row, 24 px
# per widget, 14 px padding; the 30 px title bar sits above `pos`. The layout leaves GAP between nodes, and
# output nodes get room for the images they show after a run.
SLOT_H, WIDGET_H, PAD_H, TITLE_H, WIDTH, GAP, OUTPUT_H = 20, 24, 14, 30, 320, 40, 300


def node_height(node_class, linked):
    """The height the front end gives a node with `linked` connected inputs, or more for an output node."""
    rows = max(linked, len(node_class.RETURN_TYPES))
    height = max(SLOT_H * rows + WIDGET_H * len(widget_names(node_class)) + PAD_H, 60)
    return max(height, OUTPUT_H) if getattr(node_class, "OUTPUT_NODE", False) else height


def layout(prompt, heights):
    """Left-to-right columns by dependency depth (a node sits right of everything it reads), each column
    stacked top to bottom: no two nodes overlap and every link runs rightwards."""
    depth = {}

    def depth_of(node_id):
        if node_id not in depth:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((depth_of(s) for s in sources), default=-1)
        return depth[node_id]

    pos, bottom = {}, {}
    for node_id in prompt:
        column = depth_of(node_id)
        y = bottom.get(column, 40)
        pos[node_id] = [40 + column * (WIDTH + GAP), y]
        bottom[column] = y + heights[node_id] + TITLE_H + GAP
    return pos


def api_to_ui(prompt, mappings):
    """API-format prompt -> UI-format workflow, laid out in columns by dependency (see `layout`)."""
    nodes, links = [], []
    outputs = {}
    heights = {node_id: node_height(mappings[node["class_type"]],
                                    sum(isinstance(v, list) for v in node["inputs"].values()))
               for node_id, node in prompt.items()}
    pos = layout(prompt, heights)
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
            if name is not None and name not in node["inputs"]:
                break                  # saved before this input was appended: the front end fills in its default
            widgets.append("fixed" if name is None else node["inputs"][name])
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": pos[node_id],
                      "size": [WIDTH, heights[node_id]], "flags": {}, "order": i, "mode": 0,
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
