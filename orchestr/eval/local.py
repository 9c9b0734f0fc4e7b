"""Answering with a model loaded in this process (`eval.answer.backend=local`), no deployment needed.

The model is loaded with orchestr.engine's loader from the selected `model` config; generation is
serialised (one sequence at a time), which is what a single CPU process does best anyway.
"""

from __future__ import annotations

import threading
from typing import Any

from orchestr.eval.errors import EvalError


class LocalResponder:
    def __init__(self, cfg: Any):
        from orchestr.engine.loader import ModelLoadError, load_model

        m = cfg.model
        try:
            self.model, self.tokenizer = load_model(
                m.path,
                device=m.device,
                dtype=m.dtype,
                load_8bit=m.load_8bit,
                num_gpus=m.num_gpus,
                max_gpu_memory=m.max_gpu_memory,
                cpu_offloading=m.cpu_offloading,
                tokenizer=m.tokenizer,
                trust_remote_code=m.trust_remote_code,
            )
        except ModelLoadError as e:
            raise EvalError(f"model {m.name}: {e}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise EvalError(f"model {m.name}: its tokenizer has no chat template; answer through a deployment instead")
        self._lock = threading.Lock()

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        import torch

        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in ids.items()}
        sample = temperature > 1e-4  # FastChat: greedy decoding at temperature ~0
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens, "do_sample": sample}
        if sample:
            kwargs["temperature"] = temperature
        with self._lock, torch.inference_mode():
            out = self.model.generate(**inputs, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        new = out[0, inputs["input_ids"].shape[1] :]
        return self.tokenizer.decode(new, skip_special_tokens=True)
