"""LazyDiT for ComfyUI: lazy attention/MLP for DiT and PixArt sampling (Shen et al., AAAI 2025)."""

import os


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: registers the models/lazy_gates folder and returns the node list."""
    import folder_paths
    from comfy_api.latest import ComfyExtension

    from .nodes import NODE_LIST

    folder_paths.add_model_folder_path("lazy_gates", os.path.join(folder_paths.models_dir, "lazy_gates"))
    paths, _ = folder_paths.folder_names_and_paths["lazy_gates"]
    folder_paths.folder_names_and_paths["lazy_gates"] = (paths, {".safetensors"})

    class LazyDiTExtension(ComfyExtension):
        async def get_node_list(self):
            return NODE_LIST

    return LazyDiTExtension()
