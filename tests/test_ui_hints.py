"""Advanced flags, search aliases and tooltips in the node info the front end reads (GET /object_info builds it
with GET_NODE_INFO_V1): on ComfyUI 0.33.0 and later the technical inputs are advanced and every node has its
aliases; on 0.3.75, which has neither feature, the same nodes load with the schemas they always had."""

import pytest


@pytest.fixture(scope="module")
def info(comfy):
    """Node info of every pack node, by node id."""
    return {k: cls.GET_NODE_INFO_V1() for k, cls in comfy.nodes.NODE_CLASS_MAPPINGS.items() if k.startswith("LazyDiT_")}


def inputs(node_info):
    """{input name: options} of one node's info (required and optional)."""
    out = {}
    for group in ("required", "optional"):
        for name, spec in node_info["input"].get(group, {}).items():
            out[name] = spec[1] if len(spec) > 1 else {}
    return out


def newer(runtime):
    return runtime.comfy_tree.version_tuple(runtime.COMFY) >= (0, 33)


def test_every_input_has_a_tooltip(info):
    """Each input of each pack node carries a tooltip, on either release."""
    missing = [(node, name) for node, i in info.items() for name, o in inputs(i).items() if not o.get("tooltip")]
    assert missing == [], f"inputs without a tooltip: {missing}"


def test_hints_follow_what_this_comfyui_supports(info, runtime):
    """0.33.0 and later: exactly the inputs named in nodes/compat.py are advanced (cache device/dtype, reuse, max
    lazy steps, start/end percent among them) and each node lists its search aliases; 0.3.75: no input is
    advanced, no node has aliases, and every node of the pack still loads."""
    from lazydit.nodes import NODE_LIST, compat

    assert {n.GET_SCHEMA().node_id for n in NODE_LIST} == set(info), "every pack node is registered"
    advanced = {(node, name) for node, i in info.items() for name, o in inputs(i).items() if o.get("advanced")}
    aliases = {node: i.get("search_aliases") for node, i in info.items() if i.get("search_aliases")}
    if newer(runtime):
        assert compat.supports_advanced() and compat.supports_search_aliases()
        assert advanced == {(node, name) for node, names in compat.ADVANCED.items() for name in names}
        assert {"max_lazy_steps", "cache_device", "cache_dtype", "reuse", "start_percent", "end_percent"} <= {
            name for node, name in advanced if node == "LazyDiT_ApplyGates"}
        assert aliases == compat.SEARCH_ALIASES
        assert {"cache", "speed up", "teacache", "taylorseer", "lazy"} <= set(aliases["LazyDiT_ApplyGates"])
        assert set(aliases) == set(info), f"nodes without aliases: {set(info) - set(aliases)}"
    else:
        assert not compat.supports_advanced() and not compat.supports_search_aliases()
        assert advanced == set() and aliases == {}


def test_an_unknown_advanced_name_is_refused(comfy):
    """A name in the ADVANCED table that the schema does not have is an error naming it, not a silent no-op."""
    from lazydit.nodes import compat
    from lazydit.nodes.lazy_nodes import NODES

    node = next(n for n in NODES if n.GET_SCHEMA().node_id == "LazyDiT_ApplyGates")
    schema = node.define_schema()
    saved = compat.ADVANCED["LazyDiT_ApplyGates"]
    compat.ADVANCED["LazyDiT_ApplyGates"] = (*saved, "no_such_input")
    try:
        with pytest.raises(ValueError, match="no_such_input"):
            compat.add_hints(schema)
    finally:
        compat.ADVANCED["LazyDiT_ApplyGates"] = saved


def test_display_names_differ_from_core(comfy):
    """No pack node shows the same name as a core node (0.33.0 has a core "Compare Images" beside ours)."""
    names = comfy.nodes.NODE_DISPLAY_NAME_MAPPINGS
    core = {names.get(k, k) for k in comfy.nodes.NODE_CLASS_MAPPINGS if not k.startswith("LazyDiT_")}
    pack = {names.get(k, k) for k in comfy.nodes.NODE_CLASS_MAPPINGS if k.startswith("LazyDiT_")}
    assert pack & core == set(), pack & core
