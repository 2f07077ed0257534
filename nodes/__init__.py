"""Thin ComfyUI adapters over lazy_core, one file per concern."""

from .compat import with_ui_hints
from .dydit_nodes import NODES as DYDIT_NODES
from .labels import NODES as LABEL_NODES
from .lazy_nodes import NODES as LAZY_NODES
from .loaders import NODES as LOADER_NODES
from .schedule import NODES as SCHEDULE_NODES
from .sibling_nodes import NODES as SIBLING_NODES
from .train_node import NODES as TRAIN_NODES
from .tuning import NODES as TUNING_NODES

# Advanced flags and search aliases where the running ComfyUI supports them (nodes/compat.py).
NODE_LIST = [with_ui_hints(node) for node in (*LOADER_NODES, *LABEL_NODES, *SCHEDULE_NODES, *LAZY_NODES, *SIBLING_NODES,
                                              *DYDIT_NODES, *TUNING_NODES, *TRAIN_NODES)]
