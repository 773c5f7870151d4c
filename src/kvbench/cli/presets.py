"""`kvbench presets`: the bundled model presets, their size, context and KV-cache bytes per token."""

from __future__ import annotations

import typer

from .common import Table, console


def presets(dtype: str = typer.Option("float16", help="dtype for the byte figures")):
    """List the bundled model presets: size, context, and KV-cache bytes per token."""
    import torch

    from ..estimate.kvcache import dtype_nbytes, kv_bytes_per_token
    from ..estimate.weights import param_count
    from ..inputs.configs import list_presets, preset_config, preset_info
    from ..measuring.loading.models import resolve_dtype
    from ..units import fmt_bytes, fmt_bytes_exact

    dt = resolve_dtype(dtype, torch.device("cpu"))
    table = Table(title=f"kvbench presets (bytes in {str(dt).removeprefix('torch.')})")
    for col in ["preset", "architecture", "params", "weights", "context", "sliding window", "KV / token", "Hub id"]:
        table.add_column(col, justify="right" if col in ("params", "weights", "context", "KV / token") else "left")
    for name in list_presets():
        config = preset_config(name)
        params = param_count(config)
        window = getattr(config, "sliding_window", None)
        table.add_row(
            name, config.model_type, f"{params / 1e9:.2f} B" if params > 1e8 else f"{params / 1e6:.1f} M",
            fmt_bytes(params * dtype_nbytes(dt)), str(getattr(config, "max_position_embeddings", "-")),
            str(window) if window else "-", fmt_bytes_exact(kv_bytes_per_token(config, dt, count_sliding=True)),
            preset_info(name).get("hub_id") or "-",
        )
    console.print(table)
