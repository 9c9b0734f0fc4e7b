"""Pieces several tabs build the same way."""

from __future__ import annotations

import gradio as gr

from orchestr.config.serving import WebServiceConfig

NO_MODELS = ("⚠️ No models are available: the controller lists none. "
             "Start a worker, then press **Refresh models**.")


def parameter_controls(cfg: WebServiceConfig, prefix: str) -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    with gr.Accordion("Parameters", open=False, elem_id=f"{prefix}_parameters"):
        temperature = gr.Slider(0.0, 2.0, value=cfg.temperature, step=0.05, label="Temperature",
                                elem_id=f"{prefix}_temperature", interactive=True)
        top_p = gr.Slider(0.05, 1.0, value=cfg.top_p, step=0.05, label="Top P",
                          elem_id=f"{prefix}_top_p", interactive=True)
        max_tokens = gr.Slider(1, max(2048, cfg.max_new_tokens), value=cfg.max_new_tokens, step=1,
                               label="Max output tokens", elem_id=f"{prefix}_max_tokens", interactive=True)
    return temperature, top_p, max_tokens


def model_dropdown_update(ctx, current: str | None, refresh: bool = False):
    """A dropdown update with the controller's current models, keeping the selection if still served."""
    models = ctx.current_models(refresh=refresh)
    value = current if current in models else (models[0] if models else None)
    return gr.Dropdown(choices=models, value=value)
