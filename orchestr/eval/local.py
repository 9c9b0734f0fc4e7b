"""Answering with a model loaded in this process (`eval.answer.backend=local`), no deployment needed.

The model is loaded by orchestr.engine's loader from the selected `model` config and prompted with
the engine's chat formatter (the tokenizer's template, or `model.conv_template`), as a worker would.
Generation is serialised (one sequence at a time), which is what a single CPU process does best.
"""

from __future__ import annotations

import threading
from typing import Any

from orchestr.eval.errors import EvalError


class LocalResponder:
    def __init__(self, cfg: Any):
        from orchestr.engine.loader import ModelLoadError, load_model_from_config
        from orchestr.engine.templates import ChatFormatter

        m = cfg.model
        try:
            self.model, self.tokenizer = load_model_from_config(m)
            self.formatter = ChatFormatter(self.tokenizer, m.conv_template)
        except (ModelLoadError, ValueError) as e:
            raise EvalError(f"model {m.name}: {e}") from None
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        import torch

        prompt = self.formatter.format(messages)
        enc = self.tokenizer(prompt.text, return_tensors="pt", add_special_tokens=prompt.add_special_tokens)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in enc.items()}
        sample = temperature > 1e-4  # FastChat: greedy decoding at temperature ~0
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = temperature
        eos = [self.tokenizer.eos_token_id, *prompt.stop_token_ids]
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **inputs, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=[e for e in eos if e is not None], **kwargs
            )
        text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for stop in prompt.stop:  # template stop strings end the turn
            text = text.split(stop)[0]
        return text
