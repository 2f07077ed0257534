"""Thin ComfyUI adapters over lazy_core, one file per concern."""

from .lazy_nodes import NODES as LAZY_NODES
from .sibling_nodes import NODES as SIBLING_NODES
from .train_node import NODES as TRAIN_NODES

NODE_LIST = [*LAZY_NODES, *SIBLING_NODES, *TRAIN_NODES]
